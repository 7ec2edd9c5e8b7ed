"""Tiny random checkpoints of other speech LLMs (Qwen2-Audio, Granite Speech, Voxtral) built in code, with tokenizers
built here (a byte-level BPE; for Voxtral a byte-level tekken file for mistral-common), each saved as a folder that
`salad-eval --model` loads like a Hub checkpoint. Each family's text LLM is saved beside it with the same tokenizer,
as its `--base_model`."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import make_tokenizer
from transformers import (
    Blip2QFormerConfig,
    GraniteConfig,
    GraniteForCausalLM,
    GraniteSpeechConfig,
    GraniteSpeechFeatureExtractor,
    GraniteSpeechForConditionalGeneration,
    GraniteSpeechProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    VoxtralProcessor,
    WhisperFeatureExtractor,
)
from transformers.audio_utils import mel_filter_bank
from transformers.models.granite_speech import GraniteSpeechEncoderConfig, feature_extraction_granite_speech
from transformers.models.qwen2_audio import Qwen2AudioEncoderConfig

FAMILIES = ("qwen2_audio", "granite_speech", "voxtral")
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def save(folder: Path, model, processor, base_lm) -> tuple[Path, Path]:
    model.save_pretrained(folder / "speech-llm")
    processor.save_pretrained(folder / "speech-llm")
    base_lm.save_pretrained(folder / "base-llm")
    processor.tokenizer.save_pretrained(folder / "base-llm")
    return folder / "speech-llm", folder / "base-llm"


def build_qwen2_audio(folder: Path) -> tuple[Path, Path]:
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]}
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer
    )
    text_config = Qwen2Config(vocab_size=len(tokenizer), **TINY_TEXT)
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80
        ),
        text_config=text_config,
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return save(folder, Qwen2AudioForConditionalGeneration(config), processor, Qwen2ForCausalLM(text_config))


class TorchMelSpectrogram(torch.nn.Module):
    """A power mel spectrogram as torchaudio's `MelSpectrogram` computes it by default (centered, reflect-padded Hann
    STFT, HTK mel scale, unnormalized filters), in torch alone: torchaudio publishes no build for this project's torch,
    and Granite Speech's feature extractor asks for it."""

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length))
        filters = mel_filter_bank(
            n_fft // 2 + 1, n_mels, 0.0, sample_rate / 2, sample_rate, norm=None, mel_scale="htk"
        )
        self.register_buffer("filters", torch.from_numpy(filters).float())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(
            audio, self.n_fft, self.hop_length, self.win_length, self.window, center=True, pad_mode="reflect",
            return_complex=True,
        ).abs() ** 2  # fmt: skip
        return (spectrum.transpose(-1, -2) @ self.filters).transpose(-1, -2)


def without_torchaudio(monkeypatch) -> None:
    """Granite Speech's feature extractor with `TorchMelSpectrogram` in place of torchaudio's."""
    module = feature_extraction_granite_speech
    stand_in = SimpleNamespace(transforms=SimpleNamespace(MelSpectrogram=TorchMelSpectrogram))
    monkeypatch.setattr(module, "torchaudio", stand_in, raising=False)
    monkeypatch.setattr(module, "requires_backends", lambda *args, **kwargs: None)


def build_granite_speech(folder: Path) -> tuple[Path, Path]:
    tokenizer = make_tokenizer()  # its `<|audio|>` is Granite Speech's audio token
    processor = GraniteSpeechProcessor(audio_processor=GraniteSpeechFeatureExtractor(), tokenizer=tokenizer)
    text_config = GraniteConfig(vocab_size=len(tokenizer), **TINY_TEXT)
    config = GraniteSpeechConfig(
        text_config=text_config.to_dict(),
        encoder_config=GraniteSpeechEncoderConfig(
            num_layers=1,
            hidden_dim=16,
            num_heads=2,
            dim_head=8,
            output_dim=8,
            context_size=20,
            max_pos_emb=64,
            conv_kernel_size=3,
        ).to_dict(),  # fmt: skip
        projector_config=Blip2QFormerConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            encoder_hidden_size=16,
        ).to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|audio|>"),
        has_lora_adapter=False,
    )
    return save(
        folder, GraniteSpeechForConditionalGeneration(config), processor, GraniteForCausalLM(text_config)
    )


# mistral-common's special tokens in the order of its tekken files; Voxtral's processor fixes the audio token at 24.
TEKKEN_SPECIALS = [
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "<SPECIAL_20>", "<SPECIAL_21>",
    "<SPECIAL_22>", "<SPECIAL_23>", "[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]", *(f"<SPECIAL_{i}>" for i in range(27, 32)),
]  # fmt: skip
TEKKEN_PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def write_tekken(path: Path) -> None:
    """A tekken tokenizer file of the 256 bytes and 32 special tokens, with Whisper-style audio settings."""
    tekken = {
        "config": {
            "pattern": TEKKEN_PATTERN, "num_vocab_tokens": 256, "default_vocab_size": 256 + len(TEKKEN_SPECIALS),
            "default_num_special_tokens": len(TEKKEN_SPECIALS), "version": "v7",
        },
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)],
        "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(TEKKEN_SPECIALS)],
        "audio": {
            "sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
        },
    }  # fmt: skip
    path.write_text(json.dumps(tekken))


def build_voxtral(folder: Path) -> tuple[Path, Path]:
    from transformers.tokenization_mistral_common import MistralCommonBackend  # needs mistral-common

    folder.mkdir(parents=True, exist_ok=True)
    write_tekken(folder / "tekken.json")
    tokenizer = MistralCommonBackend(tokenizer_path=str(folder / "tekken.json"))
    processor = VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer
    )
    text_config = LlamaConfig(vocab_size=len(tokenizer), head_dim=8, **TINY_TEXT)
    config = VoxtralConfig(
        audio_config=dict(
            model_type="voxtral_encoder",
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_mel_bins=128,  # the projector stacks 4 frames of hidden size 16
        ),  # fmt: skip
        text_config=text_config.to_dict(),
        audio_token_id=processor.audio_token_id,
    )
    return save(folder, VoxtralForConditionalGeneration(config), processor, LlamaForCausalLM(text_config))


BUILDERS = {
    "qwen2_audio": build_qwen2_audio,
    "granite_speech": build_granite_speech,
    "voxtral": build_voxtral,
}


def build(family: str, folder: Path) -> tuple[Path, Path]:
    """The family's tiny speech LLM and its base LLM, saved under `folder`: (speech LLM folder, base LLM folder)."""
    torch.manual_seed(0)
    return BUILDERS[family](folder)
