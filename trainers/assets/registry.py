"""The `embedded:` names: one table of the checkpoints salad can build offline, and how any name is loaded.

`embedded:<asset>` works wherever a checkpoint name does (`salad-train`, `salad-eval`, `salad-select`, the demo,
`salad-build`): it resolves to a directory converted once from a registry package (`trainers.assets.models`) or,
for `embedded:salad`, the shipped embedded default (`trainers.assets.embedded_default`). Hub ids and local paths
pass through unchanged. `embedded:untrained` is not a directory but a model: the embedded components with a
freshly initialized MLP adapter, the untrained baseline of every comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import CONFIG_NAME

from modeling_salad import SaladConfig, SaladForConditionalGeneration, SaladProcessor

from .embedded_default import salad_embedded_default_path
from .models import minilm_path, smollm2_135m_instruct_path, whisper_base_path, whisper_tiny_en_path

EMBEDDED_PREFIX = "embedded:"
UNTRAINED = "embedded:untrained"
# What `embedded:untrained` builds fresh: an MLP adapter, which passes on nothing it hears until trained, so it is the
# baseline that does not hear (its other settings are SaladConfig's). The shipped default's adapter is in its folder.
EMBEDDED_ADAPTER = {"adapter_type": "mlp", "adapter_intermediate_size": 1024}


@dataclass(frozen=True)
class EmbeddedAsset:
    """An offline checkpoint: how to get its directory, and the Hub model it reproduces (for model cards)."""

    path: Callable[[], Path]
    hub_id: str | None = None


EMBEDDED_ASSETS = {
    "whisper-tiny.en": EmbeddedAsset(whisper_tiny_en_path, "openai/whisper-tiny.en"),
    "whisper-base": EmbeddedAsset(whisper_base_path, "openai/whisper-base"),
    "smollm2-135m-instruct": EmbeddedAsset(smollm2_135m_instruct_path, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "all-minilm-l6-v2": EmbeddedAsset(minilm_path, "sentence-transformers/all-MiniLM-L6-v2"),
    "salad": EmbeddedAsset(salad_embedded_default_path),  # the shipped, trained embedded default
}


def resolve_checkpoint(name: str) -> str:
    """The directory of an `embedded:<asset>` name (converted on first use); any other name unchanged."""
    if not name.startswith(EMBEDDED_PREFIX):
        return name
    asset = name[len(EMBEDDED_PREFIX) :]
    if asset not in EMBEDDED_ASSETS:
        hint = (
            f" ({UNTRAINED} is a model, not a directory: load it with load_salad)"
            if name == UNTRAINED
            else ""
        )
        raise ValueError(f"Unknown embedded asset {asset!r}{hint}; choose one of {sorted(EMBEDDED_ASSETS)}.")
    return str(EMBEDDED_ASSETS[asset].path())


def hub_id_of_converted(path: str | Path) -> str | None:
    """The Hub model that a converted asset's cache directory reproduces (its name starts with the asset's)."""
    name = Path(path).name
    for asset, entry in EMBEDDED_ASSETS.items():
        if entry.hub_id is not None and name.startswith(f"{asset}-"):
            return entry.hub_id
    return None


def load_salad(
    name: str, dtype: torch.dtype = torch.float32, **config_overrides
) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """A SALAD model in eval mode and its processor, from a path, a Hub id, `embedded:salad` or `embedded:untrained`;
    `config_overrides` are `SaladConfig` settings in place of the checkpoint's (`adapter_decoder_num_beams=1`)."""
    if name == UNTRAINED:
        encoder = resolve_checkpoint("embedded:whisper-tiny.en")
        llm = resolve_checkpoint("embedded:smollm2-135m-instruct")
        torch.manual_seed(0)  # the untrained baseline is the same adapter in every run
        model = SaladForConditionalGeneration.from_pretrained_components(
            encoder, llm, dtype=dtype, **{**EMBEDDED_ADAPTER, **config_overrides}
        )
        return model.eval(), SaladProcessor.from_pretrained_components(encoder, llm, model.config)
    path = resolve_checkpoint(name)
    check_salad_checkpoint(path)
    model = SaladForConditionalGeneration.from_pretrained(path, dtype=dtype, **config_overrides)
    return model.eval(), SaladProcessor.from_pretrained(path)


def folder_model_type(path: Path) -> str | None:
    """The `model_type` in a local checkpoint folder's config (None without a config)."""
    config = path / CONFIG_NAME
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def is_hub_id(name: str) -> bool:
    """Whether a name that is no local folder reads as a Hub model id (`namespace/name`)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def check_salad_checkpoint(name: str) -> None:
    """Before any weights load: a local folder must be a SALAD checkpoint; a name that is neither a folder nor
    a Hub id (`namespace/name`) is an error that says so, instead of the Hub client's "Repo id must be..."."""
    path = Path(name).expanduser()
    if path.is_dir():
        model_type = folder_model_type(path)
        if model_type != SaladConfig.model_type:
            found = f"a {model_type!r} checkpoint" if model_type else f"no {CONFIG_NAME}"
            raise ValueError(
                f"{name} is not a SALAD checkpoint ({found}). A plain LLM or speech encoder becomes one with "
                "`salad-build --audio_encoder ... --language_model ...` (or `from_pretrained_components`)."
            )
        return
    if not is_hub_id(name):
        raise FileNotFoundError(
            f"No checkpoint at {name}: no such folder, and not a Hub id (namespace/name)."
        )
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"No folder {name} here, and HF_HUB_OFFLINE=1, so the Hub id {name} cannot be fetched."
        )
