"""The paper this package implements, as model cards and the trainer's generated cards cite it."""

PAPER_TITLE = "Closing the Gap Between Text and Speech Understanding in LLMs"
PAPER_ARXIV_ID = "2510.13632"
CITATION = """\
@inproceedings{cuervo2026closing,
  title         = {Closing the Gap Between Text and Speech Understanding in {LLMs}},
  author        = {Cuervo, Santiago and Seto, Skyler and de Seyssel, Maureen and Bai, Richard He and
                   Gu, Zijin and Likhomanenko, Tatiana and Jaitly, Navdeep and Aldeneh, Zakaria},
  booktitle     = {The Fourteenth International Conference on Learning Representations (ICLR)},
  year          = {2026},
  eprint        = {2510.13632},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL}
}"""
