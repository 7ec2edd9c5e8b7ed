"""`salad-train`: cross-modal distillation from the command line.

    salad-train --config configs/paper-cpu/stage1.yaml
    salad-train --config configs/paper/stage1-qwen2.5-3b-mimi.yaml --per_device_train_batch_size 4   # flags override
    accelerate launch --config_file configs/accelerate/ddp.yaml -m trainers.distillation.train --config ...

The model is either an existing SALAD checkpoint (`model_name_or_path`) or assembled from an encoder and an LLM
(`audio_encoder` + `language_model`). Data are `datasets` rows in the schema of `trainers.distillation.data` (local files
or Hub datasets, map-style or `streaming`), mixed with text-only rows at `text_only_ratio`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor

from ..assets import load_salad, resolve_checkpoint
from .config import SaladDataArguments, SaladDistillationConfig, SaladModelArguments
from .data import build_train_dataset, load_rows
from .probes import AlignmentProbeCallback, RepeatPrompt, load_probe_rows
from .trainer import SaladDistillationTrainer

RESUME_LATEST = (
    "latest",
    "true",
)  # --resume_from_checkpoint values that mean "the newest complete checkpoint"


#: Adapter settings that change how Whisper decodes, not the adapter's weights: a checkpoint may train with others.
DECODING_SETTINGS = {"adapter_decoder_num_beams", "adapter_decoder_pad_seconds"}


def load_model_and_processor(
    model_args: SaladModelArguments,
) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """The SALAD checkpoint to continue (`load_salad`, the one loader; Whisper's decoding settings may replace the
    checkpoint's), or a new model assembled from an encoder and an LLM with the `adapter_*` settings given."""
    dtype = getattr(torch, model_args.dtype)
    adapter_kwargs = {
        name: value
        for name, value in vars(model_args).items()
        if name.startswith("adapter_") and value is not None
    }
    if model_args.model_name_or_path is not None:
        shape = sorted(set(adapter_kwargs) - DECODING_SETTINGS)
        if shape:
            raise ValueError(
                f"{', '.join(shape)} shape the adapter of a new model; {model_args.model_name_or_path} has its own "
                "adapter. Drop them, or assemble a new model with --audio_encoder and --language_model."
            )
        return load_salad(model_args.model_name_or_path, dtype, **adapter_kwargs)
    audio_encoder = resolve_checkpoint(model_args.audio_encoder)
    language_model = resolve_checkpoint(model_args.language_model)
    model = SaladForConditionalGeneration.from_pretrained_components(
        audio_encoder, language_model, dtype=dtype, **adapter_kwargs
    )
    processor = SaladProcessor.from_pretrained_components(audio_encoder, language_model, model.config)
    return model, processor


def complete_checkpoints(output_dir: str | Path, state_name: str = TRAINER_STATE_NAME) -> list[Path]:
    """`checkpoint-N` folders of a run that hold their training state (`state_name`: the Trainer's, or a research
    script's own) and weights, oldest first. (The trainer renames a checkpoint into place only once it is written;
    this also skips incomplete ones of older runs.)"""
    folder = Path(output_dir)
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        weights = any((path / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        if step.isdigit() and (path / state_name).is_file() and weights:
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """`latest` (or `true`): the newest complete checkpoint in `output_dir`; a path is kept as it is."""
    if resume_from_checkpoint is None or resume_from_checkpoint.lower() not in RESUME_LATEST:
        return resume_from_checkpoint
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint}: no complete checkpoint in {output_dir} (a "
            "checkpoint-N folder with trainer_state.json and weights). Start without the flag, or give a path."
        )
    return str(checkpoints[-1])


def repeat_probe_prompt(training_args: SaladDistillationConfig) -> RepeatPrompt:
    """How the repeat probe asks: in the chat template when `probe_chat` says so, else as the run's rows do."""
    chat = training_args.chat_format if training_args.probe_chat is None else training_args.probe_chat
    return RepeatPrompt(chat, training_args.chat_instruction or RepeatPrompt.instruction)


def main(argv: list[str] | None = None) -> None:
    parser = TrlParser((SaladModelArguments, SaladDataArguments, SaladDistillationConfig))
    model_args, data_args, training_args = parser.parse_args_and_config(args=argv)
    set_seed(training_args.seed)  # a freshly built adapter is drawn here: the same --seed, the same weights
    model, processor = load_model_and_processor(model_args)
    train_dataset = build_train_dataset(data_args, training_args)
    eval_dataset = None
    if data_args.eval_split is not None:
        eval_dataset = load_rows(
            data_args.dataset_name,
            data_args.data_files,
            data_args.eval_split,
            False,
            data_args.dataset_config,
        )
    teacher_model = None
    if model_args.teacher_model_name_or_path is not None:
        teacher_model = AutoModelForCausalLM.from_pretrained(
            resolve_checkpoint(model_args.teacher_model_name_or_path), dtype=getattr(torch, model_args.dtype)
        )
    trainer = SaladDistillationTrainer(
        model=model,
        args=training_args,
        processing_class=processor,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        teacher_model=teacher_model,
    )
    probe_files = {
        "probe": training_args.probe_data_file,
        "answer_probe": training_args.answer_probe_data_file,
    }
    for name, path in probe_files.items():
        if path is None:
            continue
        rows = load_probe_rows(path, training_args.probe_num_rows, processor.sampling_rate)
        trainer.add_callback(
            AlignmentProbeCallback(
                processor,
                rows,
                training_args.probe_steps,
                training_args.output_dir,
                repeat_probe_prompt(training_args),
                name=name,
            )
        )
    trainer.train(
        resume_from_checkpoint=resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    if training_args.train_llm == "lora":
        model.merge_lora()  # publishable checkpoints hold a plain LLM
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)


if __name__ == "__main__":
    main()
