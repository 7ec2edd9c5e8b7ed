"""The small SALAD recipe on the embedded default, step by step: what `make demo` runs live and what
`benchmarks/reproduce_small.py` repeats over seeds and settings.

Fresh data (text-pool sentences the shipped model never saw, spoken by the training voices and by held-out
voices), Stage II active selection with the current model, a short LoRA distillation continuation, and the
spoken task-set evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eval.harness import EvalArguments, run
from trainers.assets import load_salad
from trainers.distillation.config import SaladDataArguments, SaladDistillationConfig
from trainers.distillation.data import build_train_dataset
from trainers.distillation.misalignment import forgetting_and_misalignment
from trainers.distillation.prepare_data import (
    PrepareArguments,
    draw_sentences,
    split_voices,
    write_text_pool_rows,
)
from trainers.distillation.trainer import SaladDistillationTrainer
from trainers.selection.select import SelectArguments, select_synthetic_speech
from trainers.selection.text_pool import TextPoolArguments, build_text_pool
from trainers.tts import get_backend

CPUINFO = Path("/proc/cpuinfo")


def fastest_dtype() -> str:
    """bfloat16 where it is computed natively (a GPU, or a CPU with AVX512-BF16 / AMX), else float32."""
    if torch.cuda.is_available():
        return "bfloat16"
    try:
        flags = CPUINFO.read_text().split()
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


@dataclass
class RecipeArguments:
    output_dir: str = field(default="runs/demo", metadata={"help": "The run folder (replaced if it exists)."})
    fast: bool = field(
        default=False, metadata={"help": "Fewer items, sentences and steps (7 minutes on 2 cores)."}
    )
    model: str = field(
        default="embedded:salad",
        metadata={"help": "The shipped model to start from (path, Hub id or embedded:)."},
    )
    base_model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={
            "help": "The original text LLM, the evaluations' text reference: the shipped model's LLM holds merged "
            "LoRA, so its own text is not SmolLM2's. Give the LLM that --model was built on when it is not the "
            "embedded default."
        },
    )
    eval_items: int | None = field(
        default=None, metadata={"help": "Spoken task items per evaluation (default 96; --fast 24)."}
    )
    pool_sentences: int | None = field(
        default=None, metadata={"help": "Fresh text-pool sentences for Stage II (default 1500; --fast 300)."}
    )
    train_steps: int | None = field(
        default=None, metadata={"help": "Steps of the live continuation (default 40; --fast 8)."}
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation and training dtype: bfloat16 (weights / autocast) or float32. Default: bfloat16 where "
            "the CPU computes it natively (AVX512-BF16 or AMX) or on a GPU, else float32 (emulated bf16 matmuls "
            "are many times slower)."
        },
    )
    alpha: float = field(
        default=1.0, metadata={"help": "Distillation weight of the continuation (0: plain NLL)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the continuation (data order, LoRA init)."})
    transcript_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep the Whisper transcripts of a `whisper_decoder` model's clips here, for training and "
            "evaluation alike (`trainers.distillation.transcript_cache`): every model that shares its frozen "
            "Whisper reads them back. None: each run transcribes its clips itself."
        },
    )

    def __post_init__(self):
        fast = self.fast
        self.eval_items = self.eval_items or (24 if fast else 96)
        self.pool_sentences = self.pool_sentences or (300 if fast else 1500)
        self.train_steps = self.train_steps or (8 if fast else 40)
        self.dtype = self.dtype or fastest_dtype()


def evaluate(model: str, systems: list[str], output_dir: Path, args: RecipeArguments) -> dict:
    eval_args = EvalArguments(
        model=model, base_model=args.base_model, systems=systems, limit=args.eval_items, tts_voice="en-us",
        dtype=args.dtype, output_dir=str(output_dir), transcript_cache_dir=args.transcript_cache_dir,
        distribution_metrics="salad_speech" in systems and "salad_text" in systems,
    )  # fmt: skip
    return run(eval_args)["tasks"]["offline"]


# How many sentences of the seeded text-pool draw the shipped embedded default was trained on (`make
# embedded-default`: `prepare_data --num_sentences 30000`); the demo's fresh data starts after them.
SHIPPED_TRAINING_SENTENCES = 30_000


def fresh_data(output: Path, args: RecipeArguments) -> tuple[Path, Path, Path]:
    """Spoken rows and a text pool from sentences past the shipped model's training draw."""

    pool_file = Path("data/text_pool/pool.jsonl")
    if not pool_file.exists():
        build_text_pool(TextPoolArguments(output_dir=str(pool_file.parent)))
    spoken = 60 if args.fast else 200
    data_dir = output / "data"
    counts = write_text_pool_rows(
        PrepareArguments(
            output_dir=str(data_dir),
            source="text_pool",
            num_sentences=spoken,
            offset=SHIPPED_TRAINING_SENTENCES,
            eval_fraction=0.5,
            num_workers=0,
        )  # fmt: skip
    )
    # Stage II's pool and the text-only rows: the next sentences of the same draw, never spoken above.
    sentences = draw_sentences(
        str(pool_file), args.pool_sentences, 40, seed=0, offset=SHIPPED_TRAINING_SENTENCES + spoken
    )
    pool = data_dir / "stage2_pool.jsonl"
    pool.write_text("".join(json.dumps({"text": text}) + "\n" for text in sentences))
    print(f"    {counts['train']} rows in training voices, {counts['eval']} in held-out voices; "
          f"{len(sentences)} fresh pool sentences for Stage II")  # fmt: skip
    return data_dir / "train.jsonl", data_dir / "eval.jsonl", pool


def stage2_selection(
    shipped: Path,
    pool: Path,
    natural: Path,
    output: Path,
    args: RecipeArguments,
    gamma: float = 5.0,
    cache_dir: Path | None = None,
) -> dict:
    """Stage II on the fresh pool. Selections that share a `cache_dir` share the pool's clusters, their probes' audio
    and M(c), and the audio of every text both select: espeak-ng's output differs a little from run to run, and M(c)
    with it, so two arms meant to differ only in gamma must share one."""
    report = select_synthetic_speech(
        SelectArguments(
            output_dir=str(output),
            cache_dir=None if cache_dir is None else str(cache_dir),
            model=str(shipped),
            model_dtype=args.dtype,
            pool_data_files=[str(pool)],
            num_clusters=6 if args.fast else 12,
            num_probes=3 if args.fast else 4,
            gamma=gamma,
            budget_seconds=60.0 if args.fast else 240.0,
            natural_data_files=[str(natural)],
            tts_voices=training_voices("espeak-ng"),
            synthetic_proportion=0.5,
        )  # fmt: skip
    )
    ranked = sorted(
        (c for c in report["clusters"] if c["misalignment"] is not None), key=lambda c: -c["misalignment"]
    )
    print(
        f"    {report['num_clusters']} clusters; M(c) from {ranked[-1]['misalignment']:.2f} to "
        f"{ranked[0]['misalignment']:.2f} nats/token; most misaligned: {ranked[0]['example_texts'][0]!r}"
    )
    print(f"    selected {report['selected_seconds']:.0f} s of synthetic speech ({report['selected_utterances']} "
          f"texts), {ranked[0]['samples']} of them from the most misaligned cluster")  # fmt: skip
    return report


def training_voices(backend: str) -> list[str]:
    """The backend's voices but the evaluation's held-out ones."""

    return split_voices(get_backend(backend), PrepareArguments(output_dir=".").held_out_voices)[0]


def load_rows_list(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def misalignment_and_forgetting(model, processor, rows: list[dict]) -> dict:
    model.eval()
    with torch.no_grad():
        return forgetting_and_misalignment(model, processor, rows)


def continue_training(
    shipped: Path,
    train_file: Path,
    text_file: Path,
    held_out: list[dict],
    output: Path,
    args: RecipeArguments,
    save_steps: int | None = None,
) -> tuple[list[dict], dict, dict]:
    """LoRA distillation from the shipped checkpoint; returns the log and M/F on `held_out` before and after.
    With `save_steps`, a checkpoint every that many steps goes to `output/trainer/checkpoint-N` (a curve's points)."""

    model, processor = load_salad(str(shipped))
    config = SaladDistillationConfig(
        output_dir=str(output / "trainer"), max_steps=args.train_steps, per_device_train_batch_size=8,
        learning_rate=5e-4, adapter_learning_rate=2e-4, warmup_steps=2, lr_scheduler_type="constant_with_warmup",
        train_llm="lora", lora_r=8, lora_alpha=16, teacher_mode="shared", text_only_ratio=0.25,
        interleave_probability=0.5, continuation="Repeat what was said: {transcript}",
        report_to=[], use_cpu=True, bf16=args.dtype == "bfloat16", dataloader_num_workers=0,
        seed=args.seed, alpha=args.alpha, transcript_cache_dir=args.transcript_cache_dir,
        # a curve's checkpoints log every step, so that each knows the minutes of speech up to it
        logging_steps=2 if save_steps is None else 1,
        **({"save_strategy": "no"} if save_steps is None else {"save_strategy": "steps", "save_steps": save_steps}),
    )  # fmt: skip
    dataset = build_train_dataset(
        SaladDataArguments(data_files=[str(train_file)], text_data_files=[str(text_file)]), config
    )
    trainer = SaladDistillationTrainer(
        model=model, args=config, processing_class=processor, train_dataset=dataset
    )
    before = misalignment_and_forgetting(model, processor, held_out)  # LoRA is on, still at zero: F = 0
    trainer.train()
    after = misalignment_and_forgetting(model, processor, held_out)
    model.merge_lora()
    model.save_pretrained(output / "model")
    processor.save_pretrained(output / "model")
    return trainer.state.log_history, before, after
