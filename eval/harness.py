"""The text-speech gap harness: which systems answer the items of each task, and how (`salad-eval` runs `run`).

Five systems answer the same items by default: `base_text` (the original LLM on text: the reference),
`salad_text` (retention), `salad_speech` (question spoken, options read), `cascade` (ASR transcript -> base LLM)
and `prior` (options with the question left out: the option-prior control). A sixth, `self_cascade`, is a
diagnostic to ask for: the SALAD model writes down each clip itself, and the base LLM answers that transcript.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from trainers.assets import UNTRAINED, load_salad, resolve_checkpoint
from trainers.distillation.misalignment import forgetting_and_misalignment
from trainers.distillation.probes import word_error_rate

from .gap import gap_report
from .report import markdown_table, save_plots
from .scoring import (
    LoraOffLM,
    chat_prompt,
    few_shot_block,
    prior_prompt,
    score_speech_items,
    score_text_items,
    text_prompt,
)
from .speech import self_transcribe, synthesize_items, transcribe
from .tasks import load_offline_tasks, load_task, parse_task_spec

SYSTEMS = ("base_text", "salad_text", "salad_speech", "cascade", "prior", "self_cascade")
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "self_cascade")  # it generates per item: asked for by name


@dataclass
class EvalArguments:
    model: str = field(
        default=UNTRAINED,
        metadata={
            "help": "SALAD checkpoint (path or Hub id). `embedded:untrained` assembles Whisper tiny.en + a fresh "
            "adapter + SmolLM2-135M-Instruct from the offline packages (the untrained baseline)."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The original text LLM (reference and F). Default: the SALAD model's own LLM with LoRA off, "
            "exact when the LLM was frozen or LoRA-tuned; give it for fully fine-tuned LLMs."
        },
    )
    asr_model: str = field(
        default="embedded:whisper-tiny.en", metadata={"help": "Whisper checkpoint of the cascade's ASR."}
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


def evaluate_task(name, items, model, processor, base_lm, args: EvalArguments) -> dict:
    """Every requested system on the items of one task; returns choices, correctness and the report."""
    tokenizer = processor.tokenizer
    fewshot = load_offline_tasks("fewshot")[: args.num_fewshot] if args.num_fewshot else []
    shots = few_shot_block(fewshot)
    needs_audio = {"salad_speech", "cascade", "self_cascade"} & set(args.systems)
    clips = (
        synthesize_items(
            items,
            processor.sampling_rate,
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
        transcripts["cascade"] = transcribe(args.asr_model, clips, processor.sampling_rate)
    if "self_cascade" in args.systems:
        transcripts["self_cascade"] = self_transcribe(model, processor, items, clips, args.chat)

    def framed(prompt: str) -> str:
        return chat_prompt(prompt, tokenizer) if args.chat else prompt

    def read_transcripts(system: str) -> list:
        prompts = [framed(text_prompt(transcript, shots)) for transcript in transcripts[system]]
        return score_text_items(base_lm, tokenizer, items, prompts, args.batch_size)

    texts = [framed(text_prompt(item.spoken_text, shots)) for item in items]
    speech_prompt = framed(text_prompt(processor.audio_token, shots))
    scorers = {
        "base_text": lambda: score_text_items(base_lm, tokenizer, items, texts, args.batch_size),
        "salad_text": lambda: score_text_items(model, tokenizer, items, texts, args.batch_size),
        "salad_speech": lambda: score_speech_items(
            model, processor, items, clips, speech_prompt, args.batch_size
        ),
        "cascade": lambda: read_transcripts("cascade"),
        "self_cascade": lambda: read_transcripts("self_cascade"),
        "prior": lambda: score_text_items(
            model, tokenizer, items, [framed(prior_prompt(shots))] * len(items), args.batch_size
        ),
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
        rows = [
            {
                "text": item.spoken_text,
                "audio": {"array": clip, "sampling_rate": processor.sampling_rate},
                "domain": item.domain,
            }
            for item, clip in zip(items, clips)
        ]
        report["distribution"] = forgetting_and_misalignment(model, processor, rows)
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


def run(args: EvalArguments) -> dict:
    """Every task and system of `args`; writes `results.json`, `results.md` and the plots to `output_dir`."""
    sources = task_sources(args.tasks)
    items_per_task = {
        name: load_task(source, args.limit) for name, source in sources.items()
    }  # before the model
    dtype = getattr(torch, args.dtype)
    model, processor = load_salad(args.model, dtype)
    base_lm = None
    if args.base_model is not None:
        base_lm = AutoModelForCausalLM.from_pretrained(
            resolve_checkpoint(args.base_model), dtype=dtype
        ).eval()
    reference = base_lm if base_lm is not None else LoraOffLM(model)
    results = {"config": asdict(args), "task_sources": sources, "tasks": {}}
    for name, items in items_per_task.items():
        results["tasks"][name] = evaluate_task(name, items, model, processor, reference, args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown_table(results))
    results["plots"] = save_plots(results, output_dir)
    return results
