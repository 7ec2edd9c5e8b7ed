"""A distillation trainer on the embedded default, shared by the training benchmarks.

Whisper tiny.en (frozen) + the embedded default's MLP adapter (freshly drawn from `seed`) + SmolLM2-135M-Instruct,
trained on real human speech (the Asterisk prompts, in name order) with the whole utterance followed by
"Repeat what was said: {transcript}". The benchmarks import it inside the child processes they spawn, so each
measurement gets a process of its own.
"""

from __future__ import annotations

import platform
import sys
import tempfile

import torch
from datasets import Dataset

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.assets.asterisk import asterisk_prompts
from trainers.assets.models import smollm2_135m_instruct_path, whisper_tiny_en_path
from trainers.assets.registry import EMBEDDED_ADAPTER
from trainers.distillation.config import SaladDistillationConfig
from trainers.distillation.trainer import SaladDistillationTrainer

MODEL_DESCRIPTION = "Whisper tiny.en (frozen) + MLP adapter + SmolLM2-135M-Instruct"


def embedded_default_trainer(
    steps: int, batch_size: int, device: str = "cpu", dtype: str = "float32", seed: int = 0, **config
) -> SaladDistillationTrainer:
    """A trainer for `steps` steps of `batch_size` Asterisk prompts; `config` overrides SaladDistillationConfig
    fields (for example `train_llm`, `teacher_mode`, `loss_implementation`)."""
    encoder, llm = str(whisper_tiny_en_path()), str(smollm2_135m_instruct_path())
    torch.manual_seed(seed)
    model = SaladForConditionalGeneration.from_pretrained_components(
        encoder, llm, dtype=getattr(torch, dtype), **EMBEDDED_ADAPTER
    )
    processor = SaladProcessor.from_pretrained_components(encoder, llm, model.config)
    clips = asterisk_prompts(limit=batch_size * steps)
    rows = [
        {"text": c.transcript, "audio": {"array": c.audio, "sampling_rate": c.sampling_rate}} for c in clips
    ]
    args = SaladDistillationConfig(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch_size, report_to=[],
        save_strategy="no", use_cpu=device == "cpu", bf16=dtype == "bfloat16" and device == "cuda",
        continuation="Repeat what was said: {transcript}", disable_tqdm=True, seed=seed, logging_steps=1,
        **config,
    )  # fmt: skip
    return SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )


def report_header(script: str, device: str, dtype: str, batch_size: int, steps: int) -> dict:
    """What every training benchmark's results file starts with: the command, the machine and the setup."""
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
        "model": MODEL_DESCRIPTION,
        "batch_size": batch_size,
        "steps": steps,
    }
