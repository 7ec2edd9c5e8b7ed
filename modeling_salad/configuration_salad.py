"""Configuration of SALAD speech LLMs (speech encoder -> adapter -> causal LM).

Also home of the one piece of arithmetic that the processor and the model must agree on: how many
`<|audio|>` tokens a clip of N samples becomes (`AudioLengthSpec`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .adapters_salad import ADAPTERS, adapter_class

#: Encoder families with a dedicated code path. Anything else must return `last_hidden_state` and expose
#: `conv_kernel`/`conv_stride` in its config (wav2vec2, HuBERT, WavLM, data2vec-audio...).
WHISPER_MODEL_TYPES = ("whisper", "whisper_encoder")
MIMI_MODEL_TYPES = ("mimi", "mimi_encoder")
#: Samples in one of Whisper's STFT windows (its log-mel: 25 ms at 16 kHz, centred on each 10 ms frame).
WHISPER_N_FFT = 400
# Settings of the "whisper_decoder" adapter's top-k mixture of first LM pieces, which the lossless interface replaced
# (issue 33; `adapter_ctc_top_k` was its name before issue 32). Configs of other adapters saved them too, unread.
LEGACY_MIXTURE_SETTINGS = ("adapter_top_k", "adapter_ctc_top_k")


@dataclass(frozen=True)
class AudioLengthSpec:
    """How a clip of `num_samples` becomes `<|audio|>` tokens, step by step.

    0. `end_samples` of silence are appended to the clip (as far as its last window has room), so that its
       features hold every frame whose analysis window reaches its last samples (Whisper's extractor pads with
       30 s of silence, and its decoder learned to read a clip's sound fading out over those frames, not stopping
       short of them).
    1. Clips longer than `chunk_samples` are cut into windows of at most `chunk_samples` (the encoder's
       window, e.g. 30 s for Whisper); each window is encoded on its own and the tokens are concatenated. With
       `quiet_cuts` (`window_lengths`, given the audio), each cut moves back to the quietest stretch of the
       window's second half, so that no word is split, and lands on a multiple of `token_hop` samples: every
       window but the last makes exactly `length / token_hop` tokens, and a clip's count stays `num_tokens`.
    2. A window shorter than `min_samples` is zero-padded to it (a 1-sample clip still needs one frame), and
       to a whole number of codec frames when `ceil_hop > 1`.
    3. The processor turns samples into feature frames: `samples // feature_hop` (Whisper log-mel: hop 160,
       last STFT frame dropped; raw-waveform encoders: hop 1, the samples themselves).
    4. Inside the encoder, strided convolutions `(kernel, stride, padding)` shrink the frames,
       `(T + 2p - k) // s + 1`, and a causal codec with hop `ceil_hop` gives `ceil(T / ceil_hop)` (Mimi: 1920).
    5. The adapter stacks `stack_factor` frames into one token: `ceil(T / stack_factor)`.

    The processor uses `num_tokens` on sample counts to expand placeholders; the model uses
    `tokens_from_features` on the feature mask it receives and checks it against the encoder's real output.
    """

    feature_hop: int = 1
    min_samples: int = 1
    chunk_samples: int | None = None
    conv_layers: tuple[tuple[int, int, int], ...] = ()
    ceil_hop: int = 1
    stack_factor: int = 1
    quiet_cuts: bool = False
    end_samples: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> AudioLengthSpec:
        values = dict(values)
        values["conv_layers"] = tuple(tuple(layer) for layer in values.get("conv_layers", ()))
        return cls(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["conv_layers"] = [list(layer) for layer in self.conv_layers]
        return values

    def end_silence(self, num_samples: int) -> int:
        """Samples of silence appended to a clip of `num_samples`: `end_samples`, but never more than its last
        window has room for (a clip of exactly 30 s stays one Whisper window, as Whisper's extractor reads it)."""
        if self.chunk_samples is None:
            return self.end_samples
        return min(self.end_samples, -num_samples % self.chunk_samples)

    def pad_end(self, audio: np.ndarray) -> np.ndarray:
        """The clip with its end silence (`end_silence`): what the processor cuts into windows."""
        return np.pad(audio, (0, self.end_silence(audio.size)))

    def chunk_lengths(self, num_samples: int) -> list[int]:
        """Sample counts of the encoder windows a clip of `num_samples` (with its end silence) is cut into."""
        if num_samples < 1:
            raise ValueError(f"A clip needs at least one sample, got {num_samples}.")
        num_samples += self.end_silence(num_samples)
        if self.chunk_samples is None or num_samples <= self.chunk_samples:
            return [num_samples]
        full, rest = divmod(num_samples, self.chunk_samples)
        return [self.chunk_samples] * full + ([rest] if rest else [])

    @property
    def token_hop(self) -> int:
        """Samples per token, for encoders whose convolutions pad to keep `ceil(frames / stride)` frames."""
        strides = math.prod(stride for _, stride, _ in self.conv_layers)
        return self.feature_hop * strides * self.ceil_hop * self.stack_factor

    def window_lengths(self, audio: np.ndarray) -> list[int]:
        """Sample counts of the windows a clip (with its end silence) is cut into: `chunk_lengths`, or with
        `quiet_cuts` each cut at the start of the quietest `token_hop` block (lowest mean square) in the second
        half of its window."""
        if not self.quiet_cuts or audio.size + self.end_silence(audio.size) <= self.chunk_samples:
            return self.chunk_lengths(audio.size)
        audio = self.pad_end(audio)
        hop = self.token_hop
        lengths, start = [], 0
        while audio.size - start > self.chunk_samples:
            # blocks that may start the next window: past half a window, leaving at least a block after the cut
            first = start + (self.chunk_samples // 2 // hop) * hop
            last = min(start + self.chunk_samples, audio.size - hop) // hop * hop
            blocks = audio[first : last + hop].reshape(-1, hop).astype(np.float64)
            cut = first + hop * int(np.argmin((blocks**2).mean(-1)))
            lengths.append(cut - start)
            start = cut
        return lengths + [audio.size - start]

    def padded_samples(self, num_samples: int) -> int:
        """Samples of a window after the processor's zero-padding: up to `min_samples`, then to whole codec
        frames (a multiple of `ceil_hop`) so that a partial last frame never depends on what follows it."""
        num_samples = max(num_samples, self.min_samples)
        return -(-num_samples // self.ceil_hop) * self.ceil_hop

    def features_from_samples(self, num_samples: int) -> int:
        return self.padded_samples(num_samples) // self.feature_hop

    def tokens_from_features(self, frames):
        """Token count for feature-frame counts; works on ints and on integer tensors alike."""
        for kernel, stride, padding in self.conv_layers:
            frames = (frames + 2 * padding - kernel) // stride + 1
        frames = -(-frames // self.ceil_hop)  # ceil division, valid for tensors too
        return -(-frames // self.stack_factor)

    def num_tokens(self, num_samples: int) -> int:
        """Number of `<|audio|>` tokens for a clip of `num_samples` samples at the encoder's sampling rate."""
        if self.quiet_cuts:  # whole token hops in every window but the last, which is at least one hop long
            padded = num_samples + self.end_silence(num_samples)
            return int(self.tokens_from_features(self.features_from_samples(padded)))
        return sum(
            int(self.tokens_from_features(self.features_from_samples(n)))
            for n in self.chunk_lengths(num_samples)
        )


DEFAULT_CHUNK_SECONDS = (
    30.0  # encoder window of Mimi / wav2vec2-like encoders unless audio_chunk_seconds says
)


class SaladConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SaladForConditionalGeneration`]: a speech encoder, an adapter and a causal LM.

    Args:
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the speech encoder: a Whisper (encoder) config, a Mimi (encoder) config, or any audio
            encoder config whose model returns `last_hidden_state` (wav2vec2, HuBERT...). Defaults to Whisper.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal LM (Qwen2.5, Llama, SmolLM2...). Defaults to Qwen2.
        audio_token_id (`int`, *optional*):
            Id of the `<|audio|>` placeholder token in the LM vocabulary.
        adapter_type (`str`, *optional*, defaults to `"mlp"`):
            One of `ADAPTERS` (`adapters_salad.py`). `"transformer"`: the paper's stack of causal Transformer
            decoder layers; `"mlp"`: frame stacking followed by a SwiGLU MLP (cheap, Ultravox-style);
            `"whisper_decoder"` (Whisper encoders only): Whisper's own frozen decoder transcribes each window
            (`adapter_decoder_num_beams`), and the LM reads the transcript as its own tokenizer writes it, each
            token's embedding plus a trained SwiGLU residual of the decoder's state.
        adapter_stack_factor (`int`, *optional*, defaults to 4):
            Number of consecutive encoder frames concatenated into one audio token (Whisper's 50 Hz with 4 gives
            12.5 Hz, Mimi's rate). Use 1 for Mimi. A `"whisper_decoder"` adapter uses the audio tokens this gives
            as slots: a window's transcript may hold at most that many tokens.
        adapter_hidden_size (`int`, *optional*, defaults to 960):
            Width of the Transformer adapter.
        adapter_intermediate_size (`int`, *optional*, defaults to 2560):
            MLP width of the Transformer adapter layers, and hidden width of the MLP adapter and of the
            `"whisper_decoder"` adapter's residual.
        adapter_num_layers (`int`, *optional*, defaults to 12):
            Number of causal decoder layers of the Transformer adapter.
        adapter_num_attention_heads (`int`, *optional*, defaults to 15):
            Attention heads of the Transformer adapter.
        adapter_num_key_value_heads (`int`, *optional*, defaults to 5):
            Key/value heads of the Transformer adapter (grouped-query attention).
        adapter_rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the adapter's RMS norms.
        adapter_decoder_prompt_ids (`list[int]`, *optional*):
            `"whisper_decoder"` adapter: the ids that open Whisper's transcript (start of transcript, and for a
            multilingual Whisper English and "transcribe"; then "no timestamps"). Set by
            `SaladForConditionalGeneration.from_pretrained_components` from the Whisper checkpoint.
        adapter_decoder_num_beams (`int`, *optional*, defaults to 5):
            `"whisper_decoder"` adapter: beams of the decoder's search for each window's transcript. 5 is how
            transformers' speech-recognition pipeline (and OpenAI's Whisper) transcribes, so that the LLM reads
            the transcript a cascade of the same models reads; 1 is greedy, faster and often worse.
        adapter_decoder_pad_seconds (`float`, *optional*):
            `"whisper_decoder"` adapter: how much silence Whisper reads after each window. None (the default):
            the window padded to Whisper's full 30 s, as its feature extractor pads a clip, so that the transcript
            is the cascade's. A number `s`: padded with at least `s` seconds of silence, up to the next multiple
            of `s` seconds (so that windows of similar length share an encoder run), at most 30 s; the encoder
            and the decoder's cross-attention then read a few seconds instead of 30, several times faster. Whisper
            learned on 30 s, and with too little silence after the words it sometimes fails to stop (it writes
            the sentence again, or runs on to the window's slots): such a window is read again over 30 s
            (`SaladForConditionalGeneration.transcribe_windows`). Other windows may come out a little different
            from the cascade's transcript (a capital, a punctuation mark, now and then a word).
        lora (`dict`, *optional*):
            LoRA settings of the LLM (`r`, `lora_alpha`, `lora_dropout`, `target_modules`, ... of a
            `peft.LoraConfig`) while it holds LoRA layers; set by `add_lora_to_language_model` and cleared by
            `merge_lora`/`unload_lora`, so a saved checkpoint re-creates its LoRA layers when it is loaded.
        audio_chunk_seconds (`float`, *optional*):
            Longest window the encoder sees at once; longer clips are cut into windows encoded separately.
            Defaults to the encoder's limit (30 s for Whisper) and to 30 s for other encoders too, whose attention
            over a whole clip would grow memory with the square of its length.

    Example:

    ```python
    >>> from transformers import WhisperConfig, Qwen2Config
    >>> from modeling_salad import SaladConfig, SaladForConditionalGeneration

    >>> config = SaladConfig(audio_config=WhisperConfig().to_dict(), text_config=Qwen2Config().to_dict())
    >>> model = SaladForConditionalGeneration(config)
    ```
    """

    model_type = "salad"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_token_id: int | None = None
    adapter_type: str = "mlp"
    adapter_stack_factor: int = 4
    adapter_hidden_size: int = 960
    adapter_intermediate_size: int = 2560
    adapter_num_layers: int = 12
    adapter_num_attention_heads: int = 15
    adapter_num_key_value_heads: int = 5
    adapter_rms_norm_eps: float = 1e-5
    adapter_decoder_prompt_ids: list[int] | None = None
    adapter_decoder_num_beams: int = 5
    adapter_decoder_pad_seconds: float | None = None
    lora: dict | None = None
    audio_chunk_seconds: float | None = None

    def __post_init__(self, **kwargs):
        mixture_settings = [key for key in LEGACY_MIXTURE_SETTINGS if kwargs.pop(key, None) is not None]
        if mixture_settings and self.adapter_type == "whisper_decoder":
            raise ValueError(
                f"This whisper_decoder checkpoint sets {mixture_settings[0]}: it was saved before issue 33, when the "
                "adapter handed the LM a mixture of the first LM pieces of Whisper's likeliest tokens, and its "
                "residual was trained for that. The adapter now hands the LM the transcript as the LM's tokenizer "
                "writes it, which that residual was not trained for: retrain it on the same data."
            )
        super().__post_init__(**kwargs)
        if self.adapter_stack_factor < 1:
            raise ValueError(f"adapter_stack_factor must be >= 1, got {self.adapter_stack_factor}.")
        adapter_class(self.adapter_type).check_config(self)
        if self.lora is not None and not {"r", "lora_alpha"} <= set(self.lora):
            raise ValueError(
                f"lora must hold at least `r` and `lora_alpha` (a peft.LoraConfig's), got {self.lora}."
            )
        if self.audio_encoder_family == "generic" and not hasattr(self.audio_config, "conv_kernel"):
            raise ValueError(
                f"Unsupported speech encoder {self.audio_config.model_type!r}: SALAD supports Whisper, Mimi and "
                "encoders with a convolutional front end described by `conv_kernel`/`conv_stride` "
                "(wav2vec2, HuBERT, WavLM...)."
            )

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def audio_encoder_family(self) -> str:
        """`"whisper"`, `"mimi"` or `"generic"`: which code path encodes the audio."""
        model_type = self.audio_config.model_type
        if model_type in WHISPER_MODEL_TYPES:
            return "whisper"
        if model_type in MIMI_MODEL_TYPES:
            return "mimi"
        return "generic"

    @property
    def audio_sampling_rate(self) -> int:
        return getattr(self.audio_config, "sampling_rate", 16000)

    @property
    def audio_encoder_hidden_size(self) -> int:
        """Width of the features the encoder hands to the adapter."""
        if self.audio_encoder_family == "whisper":
            return self.audio_config.d_model
        if self.audio_encoder_family == "mimi":
            return getattr(self.audio_config, "latent_dim", self.audio_config.hidden_size)
        return self.audio_config.hidden_size

    @property
    def audio_length_spec(self) -> AudioLengthSpec:
        family = self.audio_encoder_family
        chunk_seconds = self.audio_chunk_seconds
        if family == "whisper":
            # log-mel at 100 Hz (hop 160 at 16 kHz, last frame dropped), then conv1 (k3 s1 p1), conv2 (k3 s2 p1)
            hop = 160
            window = self.audio_config.max_source_positions * 2 * hop
            chunk_samples = min(window, int(chunk_seconds * 16000)) if chunk_seconds else window
            return AudioLengthSpec(
                feature_hop=hop,
                min_samples=WHISPER_N_FFT,  # one STFT window
                end_samples=WHISPER_N_FFT // 2
                + hop
                - 1,  # to the last frame whose centred window reaches the clip
                chunk_samples=chunk_samples,
                conv_layers=((3, 1, 1), (3, 2, 1)),
                stack_factor=self.adapter_stack_factor,
                # Whisper's decoder loses whole windows cut at fixed times (benchmarks/long_audio.py)
                quiet_cuts=ADAPTERS[self.adapter_type].cuts_at_quiet_stretches,
            )
        # Other encoders attend over the whole clip, so memory grows with its square: 30 s windows by default too.
        chunk_samples = int((chunk_seconds or DEFAULT_CHUNK_SECONDS) * self.audio_sampling_rate)
        if family == "mimi":
            hop = round(self.audio_config.sampling_rate / self.audio_config.frame_rate)
            return AudioLengthSpec(
                chunk_samples=chunk_samples, ceil_hop=hop, stack_factor=self.adapter_stack_factor
            )
        conv_layers = tuple(
            (k, s, 0) for k, s in zip(self.audio_config.conv_kernel, self.audio_config.conv_stride)
        )
        receptive = self.audio_config.conv_kernel[0] + sum(
            (k - 1) * math.prod(self.audio_config.conv_stride[:i])
            for i, k in enumerate(self.audio_config.conv_kernel)
            if i > 0
        )
        return AudioLengthSpec(
            min_samples=receptive,
            chunk_samples=chunk_samples,
            conv_layers=conv_layers,
            stack_factor=self.adapter_stack_factor,
        )


__all__ = ["AudioLengthSpec", "SaladConfig"]
