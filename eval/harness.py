"""The text-speech gap harness: which systems answer the items of each task, and how (`salad-eval` runs `run`).

Five systems answer the same items by default: `base_text` (the original LLM on text: the reference),
`salad_text` (retention), `salad_speech` (question spoken, options read), `cascade` (ASR transcript -> base LLM)
and `prior` (options with the question left out: the option-prior control). A sixth, `self_cascade`, is a
diagnostic to ask for: the SALAD model writes down each clip itself, and the base LLM answers that transcript.

The model under test may be any speech LLM (`eval.speech_llms`): `salad_text`, `salad_speech` and `prior` are
then that model's, in its own chat template, so every results.json has one schema (`--compare` lines them up).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.assets import UNTRAINED, load_salad, resolve_checkpoint
from trainers.distillation.misalignment import forgetting_and_misalignment
from trainers.distillation.probes import word_error_rate
from trainers.distillation.transcript_cache import TranscriptCache

from .gap import gap_report
from .report import compare_results, markdown_table, save_plots
from .scoring import (
    LoraOffLM,
    chat_prompt,
    few_shot_block,
    prior_prompt,
    score_speech_items,
    score_text_items,
    text_prompt,
)
from .speech import own_whisper_transcribe, self_transcribe, synthesize_items, transcribe
from .speech_llms import SpeechLLM, is_salad_checkpoint, speech_llm_forgetting_and_misalignment
from .tasks import load_offline_tasks, load_task, parse_task_spec

SYSTEMS = ("base_text", "salad_text", "salad_speech", "cascade", "prior", "self_cascade")
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "self_cascade")  # it generates per item: asked for by name
# the cascade's ASR for a model that does not hear through Whisper's decoder
DEFAULT_ASR_MODEL = "embedded:whisper-tiny.en"


@dataclass
class EvalArguments:
    model: str = field(
        default=UNTRAINED,
        metadata={
            "help": "SALAD checkpoint or another speech LLM (path or Hub id: qwen2_audio, voxtral, granite_speech, "
            "phi4_multimodal, any-to-any remote code). `embedded:untrained` assembles Whisper tiny.en + a fresh "
            "adapter + SmolLM2-135M-Instruct from the offline packages (the untrained baseline)."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The original text LLM (reference, cascade and F). Default for a SALAD model: its own LLM with "
            "LoRA off, exact when the LLM was frozen or LoRA-tuned; give it for fully fine-tuned LLMs and for "
            "other speech LLMs (the text LLM they were built from)."
        },
    )
    asr_model: str | None = field(
        default=None,
        metadata={
            "help": "Whisper checkpoint of the cascade's ASR pipeline. None: for a SALAD model whose adapter reads "
            "Whisper's own decoder, that Whisper, read over 30 s as its pipeline reads a clip (the cascade of the "
            f"model's own parts, the pipeline's tokens, faster); for any other model, {DEFAULT_ASR_MODEL}."
        },
    )
    tasks: list[str] = field(
        default_factory=lambda: ["offline"],
        metadata={
            "help": "'offline', paper tasks (arc_challenge, openbookqa, hellaswag, piqa, storycloze, mmsu) or JSONL "
            "files: a path (named by its stem) or name=path. Items with an `audio_path` are heard from that recording."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Items per task (None: all)."})
    num_fewshot: int = field(default=0, metadata={"help": "Text few-shot examples before each item."})
    systems: list[str] = field(
        default_factory=lambda: list(DEFAULT_SYSTEMS), metadata={"help": f"Subset of {SYSTEMS}."}
    )
    tts_backend: str = field(default="espeak-ng", metadata={"help": "TTS engine for the spoken items."})
    tts_voice: str | None = field(
        default=None, metadata={"help": "TTS voice (e.g. one held out from training)."}
    )
    tts_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Synthesis cache (default: `tts/` under `$SALAD_CACHE` or ~/.cache/salad)."},
    )
    transcript_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "For a SALAD model whose adapter reads Whisper's decoder: keep each clip's Whisper transcript in "
            "this folder (`trainers.distillation.transcript_cache`), so that evaluating another checkpoint with the "
            "same frozen Whisper skips Whisper's search, most of `salad_speech`'s time. None: transcribe every run."
        },
    )
    distribution_metrics: bool = field(
        default=True, metadata={"help": "Also measure forgetting F and misalignment M."}
    )
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples of the intervals."})
    batch_size: int = field(default=16, metadata={"help": "Prompt + option sequences per forward pass."})
    normalized: bool = field(
        default=True, metadata={"help": "Pick options by length-normalized log-probability."}
    )
    chat: bool = field(
        default=False,
        metadata={
            "help": "Ask every system in the LLM's chat template (question in the user turn, `Answer:` opening "
            "the assistant's), as a model trained with `chat_format` was; default: the raw prompt."
        },
    )
    output_dir: str = field(
        default="runs/eval", metadata={"help": "Where results.json, results.md and plots go."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of the TTS voice choice."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the model's own code from its checkpoint (remote-code speech LLMs such as Ultravox)."
        },
    )
    compare: list[str] | None = field(
        default=None,
        metadata={
            "help": "results.json files of earlier runs (any models): write one table and one plot of the gap across "
            "models and tasks to output_dir, instead of evaluating a model."
        },
    )

    def __post_init__(self):
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"Unknown systems {sorted(unknown)}; choose from {SYSTEMS}.")
        if not self.systems or not self.tasks:
            raise ValueError("Give at least one --systems entry and one --tasks entry.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(
                f"--limit must be a positive number of items per task (or unset for all), got {self.limit}."
            )


@dataclass
class TextReader:
    """A causal LM asked the harness's text prompts with its tokenizer (raw, or in its chat template with `chat`):
    the base LLM of `base_text` and of the cascades."""

    lm: torch.nn.Module
    tokenizer: object
    chat: bool
    batch_size: int

    @classmethod
    def for_run(cls, lm, tokenizer, args: EvalArguments) -> TextReader:
        return cls(lm, tokenizer, args.chat, args.batch_size)

    def prompt(self, prompt: str) -> str:
        return chat_prompt(prompt, self.tokenizer) if self.chat else prompt

    def score_text_items(self, items, questions: list[str | None], shots: str) -> list:
        """Each item's options after its question as text (None: left out, the option prior)."""
        prompts = [
            self.prompt(prior_prompt(shots) if question is None else text_prompt(question, shots))
            for question in questions
        ]
        return score_text_items(self.lm, self.tokenizer, items, prompts, self.batch_size)


@dataclass
class SaladUnderTest(TextReader):
    """A SALAD model: it reads text as a causal LM does, hears through its processor's `<|audio|>` placeholder,
    repeats what it heard (the self-cascade), and gives F and M from its training pairs."""

    processor: object = None
    transcript_cache: TranscriptCache | None = None

    @classmethod
    def for_run(cls, model, processor, args: EvalArguments) -> SaladUnderTest:
        cache = (
            None if args.transcript_cache_dir is None else TranscriptCache(model, args.transcript_cache_dir)
        )
        return cls(
            lm=model, tokenizer=processor.tokenizer, chat=args.chat, batch_size=args.batch_size,
            processor=processor, transcript_cache=cache,
        )  # fmt: skip

    @property
    def sampling_rate(self) -> int:
        return self.processor.sampling_rate

    def score_speech_items(self, items, clips, shots: str) -> list:
        prompt = self.prompt(text_prompt(self.processor.audio_token, shots))
        return score_speech_items(
            self.lm, self.processor, items, clips, prompt, self.batch_size, self.transcript_cache
        )

    def self_transcripts(self, items, clips) -> list[str]:
        return self_transcribe(self.lm, self.processor, items, clips, self.chat)

    def distribution(self, items, clips, reference: TextReader) -> dict:
        rows = [
            {"text": item.spoken_text, "audio": {"array": clip, "sampling_rate": self.sampling_rate},
             "domain": item.domain}
            for item, clip in zip(items, clips)
        ]  # fmt: skip
        base_model = None if isinstance(reference.lm, LoraOffLM) else reference.lm
        return forgetting_and_misalignment(self.lm, self.processor, rows, base_model=base_model)


@dataclass
class SpeechLLMUnderTest:
    """Any other speech LLM (`eval.speech_llms`): asked in its own chat template, always."""

    llm: SpeechLLM

    @property
    def sampling_rate(self) -> int:
        return self.llm.sampling_rate

    def score_text_items(self, items, questions, shots: str) -> list:
        return self.llm.score_text_items(items, questions, shots)

    def score_speech_items(self, items, clips, shots: str) -> list:
        return self.llm.score_speech_items(items, clips, shots)

    def distribution(self, items, clips, reference: TextReader | None) -> dict:
        if reference is None:
            return speech_llm_forgetting_and_misalignment(self.llm, None, None, items, clips)
        return speech_llm_forgetting_and_misalignment(
            self.llm, reference.lm, reference.tokenizer, items, clips
        )


def cascade_transcripts(subject, clips, args: EvalArguments) -> list[str]:
    """The cascade's transcripts of the clips: Whisper's ASR pipeline on `args.asr_model`, or by default the SALAD
    model's own Whisper (`own_whisper_transcribe`) where its adapter reads Whisper's decoder."""
    if args.asr_model is None and isinstance(subject, SaladUnderTest) and subject.lm.adapter.writes_text:
        return own_whisper_transcribe(subject.lm, subject.processor, clips, args.batch_size)
    return transcribe(args.asr_model or DEFAULT_ASR_MODEL, clips, subject.sampling_rate)


def evaluate_task(name, items, subject, reference: TextReader | None, args: EvalArguments) -> dict:
    """Every requested system on the items of one task; returns choices, correctness and the report.

    `subject` is the model under test (`SaladUnderTest` or `SpeechLLMUnderTest`): it answers `salad_text`,
    `salad_speech` and `prior`. `reference` is the base text LLM: it answers `base_text` and reads the cascades'
    transcripts."""
    fewshot = load_offline_tasks("fewshot")[: args.num_fewshot] if args.num_fewshot else []
    shots = few_shot_block(fewshot)
    needs_audio = {"salad_speech", "cascade", "self_cascade"} & set(args.systems)
    clips = (
        synthesize_items(
            items,
            subject.sampling_rate,
            backend=args.tts_backend,
            voice=args.tts_voice,
            cache_dir=args.tts_cache_dir,
            seed=args.seed,
        )  # fmt: skip
        if needs_audio
        else []
    )
    transcripts = {}  # per transcript-reading system
    if "cascade" in args.systems:
        transcripts["cascade"] = cascade_transcripts(subject, clips, args)
    if "self_cascade" in args.systems:
        transcripts["self_cascade"] = subject.self_transcripts(items, clips)
    texts = [item.spoken_text for item in items]
    scorers = {
        "base_text": lambda: reference.score_text_items(items, texts, shots),
        "salad_text": lambda: subject.score_text_items(items, texts, shots),
        "salad_speech": lambda: subject.score_speech_items(items, clips, shots),
        "cascade": lambda: reference.score_text_items(items, transcripts["cascade"], shots),
        "self_cascade": lambda: reference.score_text_items(items, transcripts["self_cascade"], shots),
        "prior": lambda: subject.score_text_items(items, [None] * len(items), shots),
    }
    choices, correct = {}, {}
    for system in tqdm(args.systems, desc=f"{name}: systems"):
        scores = scorers[system]()
        choices[system] = [s.choice(args.normalized) for s in scores]
        correct[system] = [c == item.answer for c, item in zip(choices[system], items)]
    report = gap_report(
        correct, choices, [item.domain for item in items], num_samples=args.bootstrap_samples, seed=args.seed
    )
    report["chance"] = float(np.mean([1 / len(item.options) for item in items]))
    for system, written in transcripts.items():
        report[f"{system}_wer"] = word_error_rate([item.spoken_text for item in items], written)
    if args.distribution_metrics and clips:
        report["distribution"] = subject.distribution(items, clips, reference)
    report["items"] = [
        {"id": item.id, "domain": item.domain, "answer": item.answer, **{s: choices[s][k] for s in choices}}
        for k, item in enumerate(items)
    ]
    return report


def task_sources(specs: list[str]) -> dict[str, str]:
    """Short, unique task names (what results, plots and the card show) -> where each task comes from."""
    sources: dict[str, str] = {}
    for spec in specs:
        name, source = parse_task_spec(spec)
        if name in sources:
            raise ValueError(
                f"Two tasks are named {name!r} ({sources[name]} and {source}); name them with `name=path`."
            )
        sources[name] = source
    return sources


def load_subject_and_reference(args: EvalArguments) -> tuple:
    """The model under test and the base text LLM. A SALAD model's reference is its own LLM with LoRA off unless
    `base_model` names one; another speech LLM has a reference only through `base_model`."""
    dtype = getattr(torch, args.dtype)
    salad = is_salad_checkpoint(args.model, args.trust_remote_code)
    if not salad:
        check_speech_llm_systems(args)
    base_lm = base_tokenizer = None
    if args.base_model is not None:
        base_path = resolve_checkpoint(args.base_model)
        base_lm = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=dtype, trust_remote_code=args.trust_remote_code
        ).eval()
        base_tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=args.trust_remote_code)
    if salad:
        model, processor = load_salad(args.model, dtype)
        reference = TextReader.for_run(
            base_lm if base_lm is not None else LoraOffLM(model), processor.tokenizer, args
        )
        return SaladUnderTest.for_run(model, processor, args), reference
    llm = SpeechLLM.from_pretrained(args.model, dtype, trust_remote_code=args.trust_remote_code)
    reference = None if base_lm is None else TextReader.for_run(base_lm, base_tokenizer, args)
    return SpeechLLMUnderTest(llm), reference


def check_speech_llm_systems(args: EvalArguments) -> None:
    """Before any model loads: the systems a speech LLM that is not a SALAD model can answer with these arguments."""
    if "self_cascade" in args.systems:
        raise ValueError(
            f"`self_cascade` asks a SALAD model to repeat each clip, and {args.model} is not one; drop it from "
            "--systems."
        )
    needs_base = {"base_text", "cascade"} & set(args.systems)
    if args.base_model is None and needs_base:
        raise ValueError(
            f"{args.model} is not a SALAD model, so the systems {sorted(needs_base)} need the text LLM it was built "
            "from: pass --base_model (e.g. Qwen/Qwen-7B for Qwen2-Audio), or leave them out of --systems."
        )


def run(args: EvalArguments) -> dict:
    """Every task and system of `args`; writes `results.json`, `results.md` and the plots to `output_dir`."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.compare:
        return compare_results(args.compare, output_dir)
    sources = task_sources(args.tasks)
    items_per_task = {
        name: load_task(source, args.limit) for name, source in sources.items()
    }  # before the model
    subject, reference = load_subject_and_reference(args)
    results = {"config": asdict(args), "task_sources": sources, "tasks": {}}
    for name, items in items_per_task.items():
        results["tasks"][name] = evaluate_task(name, items, subject, reference, args)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown_table(results))
    results["plots"] = save_plots(results, output_dir)
    return results
