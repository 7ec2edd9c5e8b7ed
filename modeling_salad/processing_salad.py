"""SaladProcessor: audio validation and features, `<|audio|>` placeholder expansion, chat messages with audio.

Audio conventions (documented in the README):
- mono, at the feature extractor's sampling rate (16 kHz for Whisper, 24 kHz for Mimi); a different
  `sampling_rate` raises a `ValueError` (the `salad-speech-to-text` pipeline resamples and down-mixes for you);
- float PCM in [-1, 1]; integer PCM (int16/int32) is converted to float by dividing by 2**15 / 2**31;
- clips longer than the encoder window (30 s for Whisper) are cut into windows encoded one by one, and
  their audio tokens are concatenated: nothing is truncated.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from math import gcd
from pathlib import Path
from typing import NamedTuple

import numpy as np
from transformers import AutoFeatureExtractor, AutoTokenizer, BatchFeature, ProcessorMixin

from .configuration_salad import AudioLengthSpec

DEFAULT_AUDIO_TOKEN = "<|audio|>"


# Input rules for audio (README, "Input conventions and errors"): rates outside this range are refused before any
# resampling (a broken WAV header can claim 1,000,000,007 Hz); float audio is expected in [-1, 1] and refused past
# this peak (integer PCM stored as float, or a corrupt file), so it cannot turn features and losses non-finite.
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1_000, 384_000
FLOAT_PEAK_LIMIT = 4.0
# Signed integer PCM is scaled by the narrowest of these full scales that holds its values, whatever the array's
# dtype: an int64 array of int16 samples is int16 audio, not silence.
SIGNED_PCM_BITS = (16, 24, 32)


class PreparedAudio(NamedTuple):
    """A batch of clips as the model reads them.

    Attributes:
        inputs: `input_features` `[windows, ...]` (every window of every clip, in order, right-padded) and their
            `input_features_mask`, as numpy arrays.
        tokens_per_clip: each clip's number of audio tokens (its `<|audio|>` placeholders).
        windows_per_clip: each clip's number of windows (its rows of `input_features`).
    """

    inputs: dict[str, np.ndarray]
    tokens_per_clip: list[int]
    windows_per_clip: list[int]


class InvalidAudioError(ValueError):
    """Samples or a sampling rate that cannot be speech: non-finite, far too loud, ambiguous or out of range."""


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """PCM samples to float32 in [-1, 1], integers interpreted by their values; refuses what is not audio.

    - int8 is 8-bit PCM; other signed integers are 16-, 24- or 32-bit PCM, the narrowest whose range holds the
      samples; uint8 and uint16 are offset binary (silence at 128 / 32768); wider unsigned types are refused.
    - floats must be finite with a peak of at most `FLOAT_PEAK_LIMIT`.
    """
    if np.issubdtype(audio.dtype, np.unsignedinteger):
        if audio.dtype.itemsize > 2:
            raise InvalidAudioError(
                f"Unsigned {audio.dtype} audio is ambiguous: convert it to float in [-1, 1] first."
            )
        middle = float(2 ** (8 * audio.dtype.itemsize - 1))
        return ((audio.astype(np.float64) - middle) / middle).astype(np.float32)
    if np.issubdtype(audio.dtype, np.signedinteger):
        peak = int(np.abs(audio.astype(np.int64)).max()) if audio.size else 0
        bits = (
            8 if audio.dtype.itemsize == 1 else next((b for b in SIGNED_PCM_BITS if peak <= 2 ** (b - 1)), 64)
        )
        return (audio.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"Audio must be float or integer PCM, got dtype {audio.dtype}.")
    audio = audio.astype(np.float32, copy=False)
    bad = int((~np.isfinite(audio)).sum())
    if bad:
        raise InvalidAudioError(f"the audio has {bad} NaN/inf samples out of {audio.size}; clean or drop it.")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > FLOAT_PEAK_LIMIT:
        raise InvalidAudioError(
            f"float audio peaks at {peak:.3g}, but float PCM lies in [-1, 1]. If it is integer PCM stored as float, "
            "divide it by 32768 (16-bit) first; otherwise the clip is corrupt."
        )
    return audio


def check_sampling_rate(sampling_rate) -> int:
    """The rate as an int, refused outside [MIN_SAMPLING_RATE, MAX_SAMPLING_RATE] Hz before any resampling."""
    try:
        rate = int(sampling_rate)
    except (TypeError, ValueError) as error:
        raise InvalidAudioError(f"sampling_rate must be a number of Hz, got {sampling_rate!r}.") from error
    if rate != sampling_rate or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise InvalidAudioError(
            f"sampling_rate {sampling_rate!r} is not a whole number of Hz in [{MIN_SAMPLING_RATE}, "
            f"{MAX_SAMPLING_RATE}]: pass the clip's real rate (a broken file header can give a wrong one)."
        )
    return rate


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy), exact for rational rate ratios."""
    if orig_sr == target_sr:
        return audio
    from scipy.signal import resample_poly  # lazily: remote code needs scipy only to resample

    factor = gcd(orig_sr, target_sr)
    return resample_poly(audio, target_sr // factor, orig_sr // factor, axis=-1).astype(np.float32)


def load_audio(source, target_sr: int, sampling_rate: int | None = None) -> np.ndarray:
    """Decode a path, bytes, or an array (with its `sampling_rate`) to mono float32 at `target_sr`.

    Multi-channel audio is down-mixed by averaging the channels.
    """
    if isinstance(source, (str, Path, bytes, bytearray)):
        import soundfile  # lazily: remote code needs soundfile only to decode files

        data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
        try:
            audio, sampling_rate = soundfile.read(data, dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises its own LibsndfileError
            name = "the given bytes" if isinstance(source, (bytes, bytearray)) else repr(str(source))
            raise ValueError(f"Could not decode audio from {name}: {error}") from error
        audio = pcm_to_float(audio.T)  # [channels, samples]; checks the decoded samples like any array
    else:
        audio = pcm_to_float(np.asarray(source))
        if sampling_rate is None:
            raise ValueError(
                "An audio array needs its `sampling_rate`, e.g. {'array': audio, 'sampling_rate': 16000}."
            )
        if audio.ndim == 2 and audio.shape[0] > audio.shape[1]:
            audio = audio.T  # [samples, channels] -> [channels, samples]
    sampling_rate = check_sampling_rate(sampling_rate)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    return resample(audio, sampling_rate, target_sr)


class SaladProcessor(ProcessorMixin):
    r"""
    Feature extractor + tokenizer of a SALAD model.

    Every `<|audio|>` in the text stands for one clip of `audio` (in order, across the batch) and is expanded to
    as many placeholder tokens as the model makes audio embeddings for that clip.

    Args:
        feature_extractor: the speech encoder's feature extractor (`WhisperFeatureExtractor`, Mimi's
            `EncodecFeatureExtractor`, `Wav2Vec2FeatureExtractor`...).
        tokenizer: the LLM tokenizer, with `audio_token` added as a special token.
        chat_template (`str`, *optional*): overrides the tokenizer's chat template.
        audio_token (`str`, *optional*, defaults to `"<|audio|>"`): the placeholder token.
        audio_length_spec (`dict`): `AudioLengthSpec.to_dict()` of the model (`SaladConfig.audio_length_spec`),
            so that placeholder counts and audio embeddings always agree.
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template: str | None = None,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        audio_length_spec: dict | None = None,
    ):
        if audio_length_spec is None:
            raise ValueError(
                "SaladProcessor needs `audio_length_spec` (from `SaladConfig.audio_length_spec.to_dict()`); build "
                "it with `SaladProcessor.from_pretrained_components` or load a saved SALAD processor."
            )
        audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if audio_token_id is None or audio_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {audio_token!r} token. Add it as a special token first: "
                f"`tokenizer.add_special_tokens({{'additional_special_tokens': [{audio_token!r}]}})` and resize the "
                "model's embeddings, or build the processor with `SaladProcessor.from_pretrained_components`."
            )
        if audio_token_id == tokenizer.eos_token_id:
            raise ValueError(f"The audio token {audio_token!r} must not be the tokenizer's EOS token.")
        self.audio_token = audio_token
        self.audio_token_id = audio_token_id
        self.audio_length_spec = audio_length_spec
        self._length_spec = AudioLengthSpec.from_dict(audio_length_spec)
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained_components(
        cls, audio_encoder: str, language_model: str, config, audio_token: str = DEFAULT_AUDIO_TOKEN
    ) -> SaladProcessor:
        """Feature extractor of `audio_encoder` + tokenizer of `language_model` with `audio_token` added.

        `config` is the `SaladConfig` of the model built from the same checkpoints (for its audio length spec).
        """
        feature_extractor = AutoFeatureExtractor.from_pretrained(audio_encoder)
        tokenizer = add_audio_token(AutoTokenizer.from_pretrained(language_model), audio_token)
        return cls(
            feature_extractor,
            tokenizer,
            audio_token=audio_token,
            audio_length_spec=config.audio_length_spec.to_dict(),
        )

    @property
    def length_spec(self) -> AudioLengthSpec:
        """How many `<|audio|>` tokens a clip becomes (shared with the model's config)."""
        return self._length_spec

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]

    # ------------------------------------------------------------------ audio
    def validate_clip(self, clip, index: int) -> np.ndarray:
        """One clip as mono float32, or a `ValueError` that says what is wrong with it and how to fix it."""
        if hasattr(clip, "detach"):
            clip = clip.detach().cpu().numpy()
        clip = np.asarray(clip)
        if clip.ndim == 2 and 1 in clip.shape:
            clip = clip.reshape(-1)
        if clip.ndim != 1:
            raise ValueError(
                f"Audio clip {index} has shape {clip.shape}; the processor takes mono 1-D arrays. Down-mix first "
                "(e.g. `audio.mean(axis=0)` for [channels, samples]) or use the salad-speech-to-text pipeline; "
                "pass a batch as a list of 1-D clips."
            )
        if clip.size == 0:
            raise ValueError(f"Audio clip {index} is empty; every `<|audio|>` needs at least one sample.")
        try:
            return pcm_to_float(clip)
        except ValueError as error:
            raise ValueError(f"Audio clip {index}: {error}") from error

    def _features(self, window: np.ndarray) -> np.ndarray:
        """Features of one encoder window: log-mel `[mels, frames]` or the waveform `[samples]`."""
        window = np.pad(window, (0, self._length_spec.padded_samples(window.size) - window.size))
        extracted = self.feature_extractor(
            window, sampling_rate=self.sampling_rate, padding="longest", truncation=False, return_tensors="np"
        )
        key = "input_features" if "input_features" in extracted else "input_values"
        features = np.asarray(extracted[key], dtype=np.float32)[0]
        if features.ndim == 2 and key == "input_values":  # Encodec/Mimi: [channels=1, samples]
            features = features[0]
        expected = window.size // self._length_spec.feature_hop
        if features.shape[-1] != expected:
            raise RuntimeError(
                f"{type(self.feature_extractor).__name__} made {features.shape[-1]} frames for {window.size} "
                f"samples, the length spec expects {expected}: the processor and the model config disagree."
            )
        return features

    def prepare_audio(self, audio: Sequence) -> PreparedAudio:
        """Features of every window of every clip, right-padded, with masks; each clip's token and window counts."""
        windows, tokens_per_clip, windows_per_clip = [], [], []
        for index, clip in enumerate(audio):
            clip = self.validate_clip(clip, index)
            tokens_per_clip.append(self._length_spec.num_tokens(clip.size))
            lengths = self._length_spec.window_lengths(clip)
            windows_per_clip.append(len(lengths))
            clip, start = self._length_spec.pad_end(clip), 0
            for length in lengths:
                windows.append(self._features(clip[start : start + length]))
                start += length
        longest = max(w.shape[-1] for w in windows)
        features = np.stack(
            [np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, longest - w.shape[-1])]) for w in windows]
        )
        mask = np.stack([np.arange(longest) < w.shape[-1] for w in windows]).astype(np.int64)
        return PreparedAudio(
            {"input_features": features, "input_features_mask": mask}, tokens_per_clip, windows_per_clip
        )

    def expand_placeholders(self, texts: list[str], tokens_per_clip: list[int]) -> list[str]:
        """Replace the i-th `<|audio|>` of the batch by `tokens_per_clip[i]` copies of it."""
        num_placeholders = sum(text.count(self.audio_token) for text in texts)
        if num_placeholders != len(tokens_per_clip):
            raise ValueError(
                f"The text has {num_placeholders} {self.audio_token} placeholders but {len(tokens_per_clip)} audio "
                f"clips were given; put exactly one {self.audio_token} where each clip belongs."
            )
        counts = iter(tokens_per_clip)
        expanded = []
        for text in texts:
            pieces = text.split(self.audio_token)
            rebuilt = pieces[0]
            for piece in pieces[1:]:
                rebuilt += self.audio_token * next(counts) + piece
            expanded.append(rebuilt)
        return expanded

    # ------------------------------------------------------------------ call
    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` (one `<|audio|>` per clip) and extract features of `audio` (an array or a list).

        Args:
            text: a prompt or a batch of prompts. Defaults to one `<|audio|>` per clip when only audio is given.
            audio: one clip or a list of clips (1-D arrays or tensors, float or integer PCM).
            sampling_rate: sampling rate of `audio`; must equal the feature extractor's.
            return_tensors: `"pt"`, `"np"` or `None`.
            padding: tokenizer padding (batches need it); `padding_side` and other tokenizer kwargs pass through.
        """
        if text is None and audio is None:
            raise ValueError("Give `text`, `audio` or both.")
        clips = [] if audio is None else ([audio] if _is_single_clip(audio) else list(audio))
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"Audio at {sampling_rate} Hz was given, but this model's encoder expects {self.sampling_rate} Hz. "
                f"Resample it first (e.g. `modeling_salad.processing_salad.resample(audio, {sampling_rate}, "
                f"{self.sampling_rate})`) or use the salad-speech-to-text pipeline, which resamples for you."
            )
        if text is None:
            text = self.audio_token * len(clips)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("`text` is an empty list: give at least one prompt (a string per sample).")
        data = {}
        tokens_per_clip: list[int] = []
        if clips:
            prepared = self.prepare_audio(clips)
            data.update(prepared.inputs)
            tokens_per_clip = prepared.tokens_per_clip
        texts = self.expand_placeholders(texts, tokens_per_clip)
        text_inputs = self.tokenizer(texts, padding=padding, return_tensors="np", **kwargs)
        empty = [index for index, row in enumerate(text_inputs["attention_mask"]) if not np.any(row)]
        if empty:
            raise ValueError(
                f"Sample(s) {empty} have no tokens (empty text and no audio): give each sample a prompt or a clip."
            )
        data.update({"input_ids": text_inputs["input_ids"], "attention_mask": text_inputs["attention_mask"]})
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render chat messages whose content may hold audio parts, with the LLM tokenizer's own template.

        An audio part is `{"type": "audio", ...}` with the clip under `"audio"` (an array at the feature
        extractor's rate, or `{"array": ..., "sampling_rate": ...}`), or a local file under `"path"` or `"url"`
        (decoded with soundfile, down-mixed and resampled). It is rendered as one `<|audio|>`, and a newline
        separates it from a text part that follows.
        """
        conversations = [conversation] if isinstance(conversation[0], dict) else list(conversation)
        rendered, clips = [], []
        for messages in conversations:
            flat_messages = []
            for message in messages:
                content, message_clips = self._flatten_content(message["content"])
                flat_messages.append({**message, "content": content})
                clips.extend(message_clips)
            rendered.append(
                self.tokenizer.apply_chat_template(
                    flat_messages,
                    chat_template=chat_template or self.chat_template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                    **{k: v for k, v in kwargs.items() if k not in ("padding", "padding_side", "truncation")},
                )
            )
        if not tokenize:
            return rendered[0] if isinstance(conversation[0], dict) else rendered
        call_kwargs = {k: v for k, v in kwargs.items() if k in ("padding", "padding_side")}
        inputs = self(
            text=rendered,
            audio=clips or None,
            return_tensors=return_tensors,
            add_special_tokens=False,  # the template already wrote any BOS
            **call_kwargs,
            **(processor_kwargs or {}),
        )
        return inputs if return_dict else inputs["input_ids"]

    def _flatten_content(self, content) -> tuple[str, list[np.ndarray]]:
        if isinstance(content, str):
            return content, []
        pieces, clips = [], []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                # A newline ends a clip that text follows, so a text LLM's teacher reading the transcript in
                # its place sees "<transcript>\n<text>", not the two run together.
                pieces += (
                    ["\n", part["text"]] if pieces and pieces[-1] == self.audio_token else [part["text"]]
                )
            elif kind == "audio":
                pieces.append(self.audio_token)
                clips.append(self._audio_from_part(part))
            else:
                raise ValueError(
                    f"Unsupported content part type {kind!r}; SALAD takes 'text' and 'audio' parts."
                )
        return "".join(pieces), clips

    def _audio_from_part(self, part: dict) -> np.ndarray:
        source = part.get("audio", part.get("path", part.get("url")))
        if source is None:
            raise ValueError(
                "An audio part needs the clip under 'audio', or a local file under 'path' or 'url'."
            )
        if isinstance(source, dict):
            return load_audio(source["array"], self.sampling_rate, source["sampling_rate"])
        if isinstance(source, str) and source.startswith(("http://", "https://")):
            raise ValueError(f"SALAD does not download audio ({source}); save it locally and pass its path.")
        if isinstance(source, (str, Path, bytes, bytearray)):
            return load_audio(source, self.sampling_rate)
        return self.validate_clip(source, 0)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def add_audio_token(tokenizer, audio_token: str = DEFAULT_AUDIO_TOKEN):
    """Add `audio_token` to `tokenizer` as a real special token (never EOS); returns the tokenizer."""
    if tokenizer.convert_tokens_to_ids(audio_token) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [audio_token]}, replace_extra_special_tokens=False
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _is_single_clip(audio) -> bool:
    """An array or tensor is one clip (a 2-D one is refused by `validate_clip`: a [channels, samples] array
    must not pass for a batch); a batch of clips is a list or a tuple."""
    return hasattr(audio, "shape")


__all__ = [
    "InvalidAudioError",
    "PreparedAudio",
    "SaladProcessor",
    "add_audio_token",
    "load_audio",
    "resample",
]
