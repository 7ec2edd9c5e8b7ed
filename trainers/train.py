"""`salad-train`: cross-modal distillation from the command line.

    salad-train --config configs/paper-cpu/stage1.yaml
    salad-train --config configs/paper/stage1-qwen2.5-3b-mimi.yaml --per_device_train_batch_size 4   # flags override
    accelerate launch --config_file configs/accelerate/ddp.yaml -m trainers.train --config ...

The model is either an existing SALAD checkpoint (`model_name_or_path`) or assembled from an encoder and an LLM
(`audio_encoder` + `language_model`). Data are `datasets` rows in the schema of `trainers.data` (local files
or Hub datasets, map-style or `streaming`), mixed with text-only rows at `text_only_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import concatenate_datasets, interleave_datasets, load_dataset
from transformers import AutoModelForCausalLM, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor

from .assets import resolve_checkpoint
from .config import SaladDistillationConfig
from .probes import AlignmentProbeCallback, RepeatPrompt, load_probe_rows
from .trainer import SaladDistillationTrainer

RESUME_LATEST = (
    "latest",
    "true",
)  # --resume_from_checkpoint values that mean "the newest complete checkpoint"


@dataclass
class SaladModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing SALAD checkpoint (Hub id or path) to continue training."}
    )
    audio_encoder: str | None = field(
        default=None,
        metadata={"help": "Speech encoder checkpoint for a new model (Whisper, Mimi, wav2vec2...)."},
    )
    language_model: str | None = field(
        default=None, metadata={"help": "Causal LM checkpoint for a new model."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "The original text LLM for teacher_mode=separate (needed when continuing from a checkpoint "
            "whose LLM was already fine-tuned, e.g. Stage II after full fine-tuning). Default: a copy of the "
            "loaded model's LLM."
        },
    )
    # Adapter settings of a new model: None keeps SaladConfig's default (its docstring gives them), so the
    # defaults live in one place.
    adapter_type: str | None = field(
        default=None,
        metadata={
            "help": "New model's adapter (modeling_salad.ADAPTERS): 'mlp', 'transformer' (the paper's) or "
            "'whisper_decoder' (Whisper's own decoder transcribes; one embedding per transcript token)."
        },
    )
    adapter_stack_factor: int | None = field(
        default=None, metadata={"help": "New model: encoder frames per audio token."}
    )
    adapter_hidden_size: int | None = field(
        default=None, metadata={"help": "New model: Transformer adapter width."}
    )
    adapter_intermediate_size: int | None = field(
        default=None, metadata={"help": "New model: adapter MLP width."}
    )
    adapter_num_layers: int | None = field(
        default=None, metadata={"help": "New model: Transformer adapter layers."}
    )
    adapter_num_attention_heads: int | None = field(
        default=None, metadata={"help": "New model: adapter heads."}
    )
    adapter_num_key_value_heads: int | None = field(
        default=None, metadata={"help": "New model: adapter KV heads."}
    )
    adapter_top_k: int | None = field(
        default=None,
        metadata={"help": "New 'whisper_decoder' adapter: token embeddings mixed per token (0: all)."},
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.audio_encoder is None or self.language_model is None):
            raise ValueError(
                "Give either model_name_or_path (a SALAD checkpoint) or both audio_encoder and language_model."
            )


@dataclass
class SaladDataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Speech dataset: a Hub id, a local dataset directory or a loader name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of dataset_name."})
    data_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Local speech data files (jsonl/json/csv/parquet) instead of a name."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (None: no evaluation)."}
    )
    text_dataset_name: str | None = field(
        default=None, metadata={"help": "Text-only corpus (Hub id or path)."}
    )
    text_data_files: list[str] = field(default_factory=list, metadata={"help": "Local text-only data files."})
    text_split: str = field(default="train", metadata={"help": "Split of the text-only corpus."})
    streaming: bool = field(default=False, metadata={"help": "Stream the datasets instead of loading them."})


def load_rows(name: str | None, files: list[str], split: str, streaming: bool, config: str | None = None):
    """A `datasets` split from a name/directory or from local files (format from the file extension)."""
    if name is not None:
        return load_dataset(name, config, split=split, streaming=streaming)
    extension = files[0].rsplit(".", 1)[-1]
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(extension)
    if builder is None:
        raise ValueError(f"Unsupported data file {files[0]!r}: use jsonl, json, csv or parquet.")
    parts = [
        load_dataset(builder, data_files={split: [file]}, split=split, streaming=streaming) for file in files
    ]
    return concatenate_datasets(with_columns(parts)) if len(parts) > 1 else parts[0]


def with_columns(datasets: list) -> list:
    """The datasets with the union of their columns, in one order; a column a dataset lacks is None there.

    So files with different columns (TTS rows with word timestamps next to human speech without) load as one.
    """
    columns = list(dict.fromkeys(column for dataset in datasets for column in dataset.column_names))
    aligned = []
    for dataset in datasets:
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            dataset = dataset.map(lambda row, missing=missing: dict.fromkeys(missing))
        aligned.append(dataset.select_columns(columns))
    return aligned


SPEAKING_RATE_WORDS_PER_SECOND = 2.5  # read English speech; the TTS training rows average about 2.6


def speaking_seconds(text: str) -> float:
    """About how long `text` takes to say: the length by which a text-only row is grouped among spoken ones."""
    return len(text.split()) / SPEAKING_RATE_WORDS_PER_SECOND


def check_lengths(speech, column: str) -> None:
    """Refuse speech rows without the length that grouping by length sorts by, before the sampler meets a null.

    Files with different columns load as one (`with_columns`), so a file without the column gives nulls."""
    if column not in speech.column_names:
        raise ValueError(
            f"train_sampling_strategy='group_by_length' sorts rows by {column!r}, which the speech rows lack: give "
            "each row its audio's length in seconds (`python -m trainers.prepare_data` writes `duration`), or set "
            "length_column_name or another train_sampling_strategy."
        )
    missing = speech[column].count(None)
    if missing:
        raise ValueError(
            f"{missing} of {len(speech)} speech rows have no {column!r}, which train_sampling_strategy="
            f"'group_by_length' sorts rows by: give each of them its audio's length in seconds, or set another "
            "train_sampling_strategy."
        )


def build_train_dataset(data_args: SaladDataArguments, training_args: SaladDistillationConfig):
    """Speech rows, with text-only rows interleaved at `text_only_ratio` (sampled, seeded)."""
    if data_args.dataset_name is None and not data_args.data_files:
        raise ValueError("Give dataset_name or data_files for the speech data.")
    speech = load_rows(
        data_args.dataset_name, data_args.data_files, data_args.train_split, data_args.streaming,
        data_args.dataset_config,
    )  # fmt: skip
    grouped_by = (
        training_args.length_column_name
        if training_args.train_sampling_strategy == "group_by_length"
        else None
    )
    if grouped_by is not None and not data_args.streaming:
        check_lengths(speech, grouped_by)
    has_text = data_args.text_dataset_name is not None or data_args.text_data_files
    if not has_text or training_args.text_only_ratio == 0:
        return speech
    text = load_rows(
        data_args.text_dataset_name, data_args.text_data_files, data_args.text_split, data_args.streaming
    )
    # Text rows get the speech columns as nulls, so both share one schema for interleaving; grouping by length
    # needs a length on every row, so a text row gets the seconds it would take to say.
    speech_columns = [column for column in (speech.column_names or ["text", "audio"]) if column != "text"]

    def speech_columns_of_text_row(row: dict) -> dict:
        columns = dict.fromkeys(speech_columns)
        if grouped_by in columns:
            columns[grouped_by] = speaking_seconds(row["text"])
        return columns

    text = text.select_columns(["text"]).map(speech_columns_of_text_row)
    ratio = training_args.text_only_ratio
    return interleave_datasets(
        [speech, text],
        probabilities=[1 - ratio, ratio],
        seed=training_args.seed,
        stopping_strategy="first_exhausted",
    )


def load_model_and_processor(
    model_args: SaladModelArguments,
) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    dtype = getattr(torch, model_args.dtype)
    if model_args.model_name_or_path is not None:
        path = resolve_checkpoint(model_args.model_name_or_path)
        model = SaladForConditionalGeneration.from_pretrained(path, dtype=dtype)
        return model, SaladProcessor.from_pretrained(path)
    audio_encoder = resolve_checkpoint(model_args.audio_encoder)
    language_model = resolve_checkpoint(model_args.language_model)
    adapter_kwargs = {
        name: value
        for name, value in vars(model_args).items()
        if name.startswith("adapter_") and value is not None
    }
    model = SaladForConditionalGeneration.from_pretrained_components(
        audio_encoder, language_model, dtype=dtype, **adapter_kwargs
    )
    processor = SaladProcessor.from_pretrained_components(audio_encoder, language_model, model.config)
    return model, processor


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders of a run that hold their trainer state and weights, oldest first. (The trainer
    renames a checkpoint into place only once it is written; this also skips incomplete ones of older runs.)"""
    folder = Path(output_dir)
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        weights = any((path / name).is_file() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        if step.isdigit() and (path / TRAINER_STATE_NAME).is_file() and weights:
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
