"""The shipped embedded default: the trained adapter (and its settings) on the offline components.

The adapter ships in git, in `trainers/assets/embedded-default/` (bf16 safetensors, its settings and the recipe
that trained it), so a fresh clone's `make demo`, `embedded:salad` and `salad_embedded_default_path()` use it
with no training. `make embedded-default` retrains it on the CPU and `python -m hub_scripts.export_embedded_default`
writes what training changed (the adapter, the audio token's embedding row and, when the LLM trained with LoRA, the
LoRA weights) back into that folder; `embedded:salad` assembles it with Whisper tiny.en and SmolLM2-135M-Instruct
(LoRA merged into the LLM) into a full checkpoint in the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from modeling_salad.lora_salad import lora_config_from_settings

from .models import (
    CONVERSION_VERSION,
    cached_conversion,
    smollm2_135m_instruct_path,
    whisper_tiny_en_path,
)

# How to (re)train the shipped adapter on the CPU (benchmarks/alignment/README.md gives its wall time).
EMBEDDED_DEFAULT_TRAIN = "make embedded-default"
# The shipped weights are stored in bf16: half the bytes in git, at a rounding the adapter's outputs tolerate.
SHIPPED_DTYPE = torch.bfloat16
# Part of the assembled default's cache name: bump it when the assembly's output changes for the same weights.
# 2: its processor cuts long clips at quiet stretches; 3: its config names our any-to-any; 4: its processor
# appends a clip's end silence (`AudioLengthSpec.end_samples`)
ASSEMBLY_VERSION = 4


def embedded_default_dir() -> Path:
    """The folder in git that holds the shipped adapter: where the export writes it and
    `salad_embedded_default_path` reads it."""
    return Path(__file__).resolve().parent / "embedded-default"


ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# The LLM's LoRA weights, when it trained with LoRA (their settings are the "lora" entry of ADAPTER_CONFIG). A LoRA
# of rank r adds r * (d_in + d_out) numbers per target matrix: a few MB for SmolLM2-135M, where the LLM is 270 MB.
LORA_WEIGHTS = "lora.safetensors"
# The LLM's input (and tied output) embedding of `<|audio|>`, the row added when the vocabulary grew. Inputs never
# read it (audio embeddings replace it); it is shipped so that the output logits equal the trained model's.
AUDIO_TOKEN_ROW = "language_model.audio_token_embedding"


def export_embedded_default(checkpoint: str | Path, destination: Path | None = None) -> Path:
    """Keep what training changed in a SALAD checkpoint built on the embedded components: the adapter's
    weights and its `adapter_*` settings, and the LLM's LoRA weights and settings if it holds LoRA (all as bf16
    safetensors, `SHIPPED_DTYPE`). Refuses a checkpoint whose LLM base weights or encoder were trained (their
    weights would be lost: ship a full checkpoint instead). Save LoRA checkpoints unmerged: a merged LoRA is a
    trained LLM to this check."""
    destination = embedded_default_dir() if destination is None else Path(destination)
    model = SaladForConditionalGeneration.from_pretrained(checkpoint)
    adapter_settings = _adapter_settings(model.config)
    settings = dict(adapter_settings)
    lora_weights = {}
    if model.has_lora():
        settings["lora"] = model.config.lora
        lora_weights = {
            key: value.to(SHIPPED_DTYPE).contiguous()
            for key, value in model.language_model.state_dict().items()
            if ".lora_" in key
        }
        model.unload_lora()  # the base LLM is left, to be compared with SmolLM2's below
    reference = _assemble_embedded(adapter_settings)
    audio_row = model.get_input_embeddings().weight[model.config.audio_token_id].detach().clone()
    with torch.no_grad():  # the audio token's row was drawn at random when the LLM's vocabulary grew
        reference.get_input_embeddings().weight[model.config.audio_token_id] = audio_row
    frozen_adapter_parts = [f"adapter.{name}" for name in model.adapter.frozen_parts]
    for name in ("audio_tower", "language_model", *frozen_adapter_parts):
        ours, theirs = model.get_submodule(name).state_dict(), reference.get_submodule(name).state_dict()
        trained = [key for key in ours if not ours[key].equal(theirs[key])]
        if trained:
            raise ValueError(
                f"{checkpoint} changed the {name} ({trained[:3]}...): only the adapter (and LoRA on the LLM) "
                "can be shipped."
            )
    destination.mkdir(parents=True, exist_ok=True)
    weights = {
        f"adapter.{key}": value.to(SHIPPED_DTYPE).contiguous()
        for key, value in model.adapter.trained_state_dict().items()
    }
    weights[AUDIO_TOKEN_ROW] = audio_row.to(SHIPPED_DTYPE).contiguous()
    save_file(weights, destination / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if lora_weights:
        save_file(lora_weights, destination / LORA_WEIGHTS, metadata={"format": "pt"})
    else:  # a LoRA file of an earlier export must not be assembled with this adapter
        (destination / LORA_WEIGHTS).unlink(missing_ok=True)
    (destination / ADAPTER_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
    return destination


def _adapter_settings(config) -> dict:
    return {key: getattr(config, key) for key in vars(config) if key.startswith("adapter_")}


def _assemble_embedded(adapter_settings: dict, lora: dict | None = None):
    torch.manual_seed(0)  # the audio token's new embedding row is then reproducible
    return SaladForConditionalGeneration.from_pretrained_components(
        str(whisper_tiny_en_path()),
        str(smollm2_135m_instruct_path()),
        lora_config=None if lora is None else lora_config_from_settings(lora),
        **adapter_settings,
    )


def salad_embedded_default_path(source: Path | None = None) -> Path:
    """The shipped SALAD embedded default as a full checkpoint directory (model + processor + remote code):
    Whisper tiny.en + the trained adapter (`embedded_default_dir()`) + SmolLM2-135M-Instruct, assembled
    once into the cache (the entry's name carries the adapter's hash, so a new adapter makes a new entry)."""
    source = embedded_default_dir() if source is None else Path(source)
    weights = source / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"No trained embedded-default adapter at {weights}: train and export it with "
            f"`{EMBEDDED_DEFAULT_TRAIN}`."
        )
    config_bytes = (source / ADAPTER_CONFIG).read_bytes()
    settings = json.loads(config_bytes)
    lora = settings.pop("lora", None)
    lora_weights = source / LORA_WEIGHTS
    if lora is not None and not lora_weights.is_file():
        raise FileNotFoundError(
            f"{source / ADAPTER_CONFIG} asks for LoRA on the LLM but {lora_weights} is missing: export the "
            f"checkpoint again with `python -m hub_scripts.export_embedded_default`."
        )
    shipped = [weights] + ([lora_weights] if lora is not None else [])
    # The settings are hashed too: a LoRA's alpha scales its weights without changing them.
    digest = hashlib.sha256(config_bytes + b"".join(path.read_bytes() for path in shipped)).hexdigest()[:12]

    def build(staging: Path) -> None:
        model = _assemble_embedded(settings, lora)
        state = load_file(weights)
        with torch.no_grad():
            model.get_input_embeddings().weight[model.config.audio_token_id] = state.pop(AUDIO_TOKEN_ROW)
        trained = {key.removeprefix("adapter."): value for key, value in state.items()}
        if set(trained) != set(model.adapter.trained_state_dict()):
            raise ValueError(
                f"{weights} does not hold the trained weights of a {settings['adapter_type']!r} adapter: export "
                "it again with `python -m hub_scripts.export_embedded_default`."
            )
        model.adapter.load_state_dict(trained, strict=False)  # its frozen parts are the pretrained ones
        if lora is not None:
            _load_lora(model, load_file(lora_weights))
            model.merge_lora()  # a plain LLM: the checkpoint then loads as remote code without peft
        model.save_pretrained(staging)
        processor = SaladProcessor.from_pretrained_components(
            str(whisper_tiny_en_path()), str(smollm2_135m_instruct_path()), model.config
        )
        processor.save_pretrained(staging)

    return cached_conversion(
        f"salad-embedded-default-{digest}-v{CONVERSION_VERSION}-a{ASSEMBLY_VERSION}", build
    )


def _load_lora(model: SaladForConditionalGeneration, lora_weights: dict[str, torch.Tensor]) -> None:
    """Load shipped LoRA weights into the LLM's freshly injected LoRA layers, every one of them."""
    expected = {key for key in model.language_model.state_dict() if ".lora_" in key}
    if set(lora_weights) != expected:
        raise ValueError(
            f"The shipped LoRA weights do not fit the LoRA layers their settings create: missing "
            f"{sorted(expected - set(lora_weights))[:3]}, unexpected {sorted(set(lora_weights) - expected)[:3]}."
        )
    model.language_model.load_state_dict(lora_weights, strict=False)
