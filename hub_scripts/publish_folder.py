"""The folder that `salad-push` uploads, written locally first: loading a checkpoint, then preparing the folder.

Weights are re-saved as safetensors (sharded past `max_shard_size`, with an index) with config, generation
config, processor, the remote code and pipeline that `save_pretrained` writes, the model card (`README.md`) and,
when given, the gap harness's `results.json` under `eval/`. A checkpoint with LoRA on its LLM is merged, or its
LoRA goes to `lora/` as a standard PEFT adapter of the LLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft import get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.assets.registry import hub_id_of_converted

from .model_card import build_model_card
from .verify import LORA_SUBFOLDER, PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

RESULTS_PATH_IN_REPO = "eval/results.json"
# How a `PeftModel` names the weights of the model it wraps, in the adapter files it saves.
PEFT_MODEL_PREFIX = "base_model.model."


@dataclass
class FolderArguments:
    """What goes into the upload folder: the card's metadata, LoRA handling and sharding."""

    repo_id: str | None = field(
        default=None, metadata={"help": "Target Hub repository, 'namespace/name' (also named in the card)."}
    )
    space_id: str | None = field(
        default=None,
        metadata={
            "help": "A Gradio Space, 'namespace/name', that serves the model: the card links to it, and "
            "salad-push builds and uploads it."
        },
    )
    results: str | None = field(
        default=None,
        metadata={
            "help": "results.json of salad-eval: its numbers fill the card's model-index and are uploaded."
        },
    )
    training_recipe: str | None = field(
        default=None,
        metadata={
            "help": "YAML/JSON file with the training recipe for the card: {stages: [{name, ...}], ...}."
        },
    )
    base_model: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Hub ids of the speech encoder and the LLM (default: read from the checkpoint's config)."
        },
    )
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the training datasets."})
    license: str = field(
        default="apache-2.0", metadata={"help": "License of the weights (mind the base models')."}
    )
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "Languages of the model."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra Hub tags for the card."})
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "Merge the LLM's LoRA into its weights; --no_merge_lora keeps it as an adapter in lora/."
        },
    )
    max_shard_size: str = field(
        default="5GB", metadata={"help": "Largest safetensors file; bigger models are sharded with an index."}
    )

    def __post_init__(self):
        check_repo_id("--repo_id", self.repo_id, "the card's snippets load from it")
        if self.space_id is not None:
            check_repo_id("--space_id", self.space_id, "the Space is created there")


def check_repo_id(flag: str, repo_id: str | None, why: str) -> None:
    """A `ValueError` unless `repo_id` is a valid 'namespace/name' Hub id."""
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"{flag} must be 'namespace/name' (got {repo_id!r}); {why}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{flag} {repo_id!r} is not a valid Hub repository id: {error}") from error


# ------------------------------------------------------------------------------------------------- loading
def weight_files(checkpoint: Path) -> list[Path]:
    """The checkpoint's safetensors files; pickle weights are refused rather than loaded."""
    index = checkpoint / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise ValueError(
        f"No safetensors weights in {checkpoint} ({SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}). salad-push only "
        "publishes safetensors; re-save pickle checkpoints with save_pretrained from code you trust."
    )


def load_checkpoint(checkpoint: str | Path) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """Load a SALAD checkpoint in its saved dtype, with its LoRA layers when it has some.

    A checkpoint records its LoRA settings in `config.lora` (a Trainer `checkpoint-N` of a `train_llm=lora`
    run does), so `from_pretrained` re-creates the layers and loads their weights. LoRA weights without those
    settings (a checkpoint saved before salad recorded them) are refused rather than silently dropped.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / CONFIG_NAME).is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint folder (no {CONFIG_NAME}).")
    weight_files(checkpoint)  # safetensors only, with a clear error otherwise
    model, info = SaladForConditionalGeneration.from_pretrained(
        checkpoint, dtype="auto", output_loading_info=True
    )
    orphans = [key for key in info["unexpected_keys"] if ".lora_" in key or ".base_layer." in key]
    if orphans:
        raise ValueError(
            f"{checkpoint} holds LoRA weights ({orphans[:2]}...) but its config.json records no LoRA settings "
            "(`lora`), so they cannot be placed. Load it in Python, call `add_lora_to_language_model` with the "
            "training's LoraConfig, `load_state_dict` the weights and `save_pretrained` it again."
        )
    return model, SaladProcessor.from_pretrained(checkpoint)


def infer_base_models(config) -> list[str]:
    """Hub ids of the encoder and the LLM, read from the names the sub-configs were loaded from.

    Hub ids are kept; the converted offline assets map to the Hub models they reproduce; other local paths
    cannot be named on the Hub and are left out (give `--base_model` then).
    """
    found = []
    for sub_config in (config.audio_config, config.text_config):
        name = getattr(sub_config, "_name_or_path", "") or ""
        embedded = hub_id_of_converted(name) if name else None
        if embedded is not None:
            found.append(embedded)
        elif _looks_like_hub_id(name):
            found.append(name)
    if len(found) < 2:
        logger.warning(
            "The card's base_model names %s: the checkpoint's config does not name both the encoder and the LLM "
            "on the Hub. Pass them with --base_model.",
            found or "nothing",
        )
    return found


def _looks_like_hub_id(name: str) -> bool:
    if name.count("/") != 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ------------------------------------------------------------------------------------------ the folder
def split_lora(model: SaladForConditionalGeneration):
    """Take the LoRA layers out of the LLM, unmerged: returns their `LoraConfig` and PEFT-format weights.

    The model is left with the original LLM weights. The weights are keyed as `PeftModel.save_pretrained` keys
    an adapter of the LLM (`base_model.model.` + the LLM's module path), so both `peft.PeftModel.from_pretrained`
    and transformers' `load_adapter` put them back exactly.
    """
    language_model = model.language_model
    lora_config = language_model.peft_config["default"]
    state_dict = get_peft_model_state_dict(language_model, adapter_name="default")
    model.unload_lora(merge=False)
    return lora_config, {
        f"{PEFT_MODEL_PREFIX}{key}": tensor.detach().contiguous() for key, tensor in state_dict.items()
    }


def save_lora_adapter(lora_config, state_dict: Mapping[str, torch.Tensor], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(directory)
    save_file(dict(state_dict), directory / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})


def read_structured_file(path: str | None) -> dict | None:
    """A JSON or YAML file as a dict (YAML is a superset of JSON)."""
    if path is None:
        return None
    content = yaml.safe_load(Path(path).read_text())
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a mapping at its top level.")
    return content


def prepare_folder(
    model: SaladForConditionalGeneration,
    processor: SaladProcessor,
    folder: str | Path,
    args: FolderArguments,
) -> list[Path]:
    """Write everything that gets uploaded into `folder` and return the files, sorted.

    The model is modified in place when it has LoRA layers (merged, or split off into `lora/`).
    """
    folder = Path(folder)
    results = read_structured_file(args.results)
    recipe = read_structured_file(args.training_recipe)
    lora_subfolder = None
    if model.has_lora():
        if args.merge_lora:
            model.merge_lora()
        else:
            save_lora_adapter(*split_lora(model), folder / LORA_SUBFOLDER)
            lora_subfolder = LORA_SUBFOLDER
    model.save_pretrained(folder, max_shard_size=args.max_shard_size)
    processor.save_pretrained(folder)
    card = build_model_card(
        args.repo_id,
        model.config,
        base_model=args.base_model or infer_base_models(model.config),
        results=results,
        training_recipe=recipe,
        datasets=args.datasets,
        license=args.license,
        language=args.language,
        tags=args.tags,
        lora_subfolder=lora_subfolder,
        space_id=args.space_id,
    )
    card.save(folder / "README.md")
    if results is not None:
        (folder / RESULTS_PATH_IN_REPO).parent.mkdir(parents=True, exist_ok=True)
        (folder / RESULTS_PATH_IN_REPO).write_text(json.dumps(results, indent=2) + "\n")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    pickled = [path.name for path in files if path.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise ValueError(f"Refusing to publish pickle files {pickled}: weights go out as safetensors only.")
    return files
