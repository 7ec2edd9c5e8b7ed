"""SALAD checkpoints: assembled from pretrained components, saved self-sufficient for `trust_remote_code`, and
loaded from earlier layouts.

`SaladCheckpointMixin` gives `SaladPreTrainedModel` these class methods and `save_pretrained`; the model file holds
only the config-driven model.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    MimiEncoderConfig,
    MimiEncoderModel,
    PreTrainedModel,
    WhisperModel,
)

from .adapters_salad import TranscriptTokenizers, adapter_class
from .configuration_salad import MIMI_MODEL_TYPES, SaladConfig
from .pipeline_salad import ANY_TO_ANY_TASK, PIPELINE_TASK, SaladAnyToAnyPipeline, SaladSpeechToTextPipeline
from .processing_salad import DEFAULT_AUDIO_TOKEN, add_audio_token

# `from_pretrained` arguments that say where a checkpoint's files are, which its tokenizers are read with too.
TOKENIZER_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class SaladCheckpointMixin:
    """How a SALAD model is assembled, saved and loaded (on top of `PreTrainedModel`'s own methods)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As [`~PreTrainedModel.from_pretrained`]; an adapter that `writes_text` gets its tokenizers from the same
        checkpoint (`TranscriptTokenizers`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if model.adapter.writes_text:
            hub_kwargs = {key: kwargs[key] for key in TOKENIZER_HUB_KWARGS if key in kwargs}
            model.adapter.tokenizers = TranscriptTokenizers.from_pretrained(
                pretrained_model_name_or_path, model.config, **hub_kwargs
            )
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual, and make the folder self-sufficient for `trust_remote_code` users.

        Besides `AutoConfig`/`AutoModel` (written by `register_for_auto_class`), the `auto_map` also names
        `AutoModelForMultimodalLM`, which the `any-to-any` pipeline loads, and `custom_pipelines` declares
        `salad-speech-to-text` and, for this checkpoint only, `any-to-any` (transformers' pipeline with a collate
        for audio windows). Their code travels as a relative import of this file.
        """
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForMultimodalLM": _dotted_name(type(self)),
        }
        self.config.custom_pipelines = {
            PIPELINE_TASK: {
                "impl": _dotted_name(SaladSpeechToTextPipeline),
                "pt": ["AutoModel"],
                "type": "multimodal",
            },
            ANY_TO_ANY_TASK: {
                "impl": _dotted_name(SaladAnyToAnyPipeline),
                "pt": ["AutoModelForMultimodalLM"],
                "type": "multimodal",
            },
        }
        if self.adapter.writes_text:  # first: `push_to_hub=True` uploads the folder inside the call below
            self.adapter.require_tokenizers().save_pretrained(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained_components(
        cls,
        audio_encoder: str,
        language_model: str,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        freeze_audio_tower: bool = True,
        lora_config=None,
        dtype: torch.dtype | str | None = None,
        **adapter_kwargs,
    ) -> PreTrainedModel:
        """Assemble a SALAD model from an encoder checkpoint and an LLM checkpoint (Hub ids or local paths).

        The adapter is freshly initialized; the encoder and the LLM keep their pretrained weights. The LLM's
        tokenizer gets `audio_token` as a special token and the LLM's embeddings grow to fit it. Build the
        matching processor with `SaladProcessor.from_pretrained_components(audio_encoder, language_model,
        model.config)`.

        Args:
            audio_encoder: a Whisper, Mimi or wav2vec2-like checkpoint; its encoder is kept, and what the adapter
                reads besides (`"whisper_decoder"`: Whisper's decoder, frozen, its tokenizer mapped onto the LLM's).
            language_model: any causal LM checkpoint with a tokenizer.
            audio_token: the placeholder token added to the tokenizer.
            freeze_audio_tower: keep the encoder frozen (the paper's choice).
            lora_config: a `peft.LoraConfig`; LoRA goes on the LLM only and the LLM's base weights are frozen.
            dtype: dtype to load the encoder and the LLM in.
            **adapter_kwargs: `adapter_*` / `audio_chunk_seconds` fields of [`SaladConfig`].
        """
        tokenizer = add_audio_token(AutoTokenizer.from_pretrained(language_model), audio_token)
        audio_config = AutoConfig.from_pretrained(audio_encoder)
        adapter_type = adapter_class(adapter_kwargs.get("adapter_type", SaladConfig.adapter_type))
        adapter_kwargs = {**adapter_type.settings_from_encoder(audio_encoder), **adapter_kwargs}
        speech_model = load_speech_model(audio_encoder, audio_config, dtype=dtype)
        audio_model = speech_model.get_encoder() if isinstance(speech_model, WhisperModel) else speech_model
        text_model = AutoModelForCausalLM.from_pretrained(language_model, dtype=dtype)
        if len(tokenizer) > text_model.get_input_embeddings().num_embeddings:
            text_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        config = SaladConfig(
            audio_config=audio_model.config.to_dict(),
            text_config=text_model.config.to_dict(),
            audio_token_id=tokenizer.convert_tokens_to_ids(audio_token),
            **adapter_kwargs,
        )
        with torch.device("meta"):
            model = cls(config)
        model.audio_tower = audio_model
        model.language_model = text_model
        model.adapter = adapter_type(config).to(dtype=text_model.dtype)
        model.adapter.apply(model._init_weights)
        model.adapter.load_pretrained_parts(speech_model, audio_encoder, tokenizer)
        model.generation_config = text_model.generation_config
        if freeze_audio_tower:
            model.audio_tower.requires_grad_(False)
        if lora_config is not None:
            model.add_lora_to_language_model(lora_config)
        return model


def _dotted_name(cls: type) -> str:
    """`module.Class` as a checkpoint folder names it: the file's module name, without the package."""
    return f"{cls.__module__.split('.')[-1]}.{cls.__name__}"


def load_speech_model(name_or_path: str, audio_config, dtype=None) -> PreTrainedModel:
    """Load a speech checkpoint with its pretrained weights, once: Whisper whole (the encoder, and the decoder a
    `"whisper_decoder"` adapter takes), other encoders as their encoder model."""
    if audio_config.model_type == "whisper":
        return WhisperModel.from_pretrained(name_or_path, dtype=dtype)
    if audio_config.model_type in MIMI_MODEL_TYPES:
        encoder_config = MimiEncoderConfig(**audio_config.to_dict())
        return MimiEncoderModel.from_pretrained(name_or_path, config=encoder_config, dtype=dtype)
    return AutoModel.from_pretrained(name_or_path, dtype=dtype)
