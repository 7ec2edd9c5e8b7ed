"""SALAD's cross-modal distillation: the training config, the data and its collator, the loss, the trainer and
`salad-train`; the training rows it reads (`prepare_data`), the alignment probes, and the paper's forgetting F and
misalignment M."""
