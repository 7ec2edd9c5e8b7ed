"""The interface every TTS engine implements, and what it returns.

Each backend returns the same `Synthesis`, whichever engine made it: 16 kHz mono float32 in [-1, 1] and, where
the engine knows them, word timestamps. Words are the whitespace-separated tokens of the input text,
punctuation kept, because that is what `trainers.distillation.data` joins back into text when it interleaves speech and
text on word boundaries. `rate` and `pitch` are relative factors, 1.0 being the voice's default (rate 1.2
speaks 20% faster), so a random range means the same on every engine; each backend documents how it maps them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from modeling_salad.processing_salad import pcm_to_float, resample

from .word_times import _consistent_times

SAMPLING_RATE = 16000


class EngineNotFoundError(RuntimeError):
    """A TTS engine is not installed; the message names the Debian or pip package that provides it."""


@dataclass
class Synthesis:
    """Speech for `text` with the voice and controls that made it, and word timestamps in seconds.

    `words` are the whitespace-separated tokens of `text`; `word_starts`/`word_ends` are None when the
    engine cannot place words. `audio_path` is the cached WAV when `synthesize_many` wrote one.
    """

    text: str
    audio: np.ndarray
    backend: str
    voice: str
    sampling_rate: int = SAMPLING_RATE
    words: list[str] = field(default_factory=list)
    word_starts: list[float] | None = None
    word_ends: list[float] | None = None
    rate: float | None = None
    pitch: float | None = None
    audio_path: str | None = None

    @property
    def duration(self) -> float:
        return self.audio.size / self.sampling_rate

    def metadata(self) -> dict[str, Any]:
        """Everything but the samples: the JSON sidecar of a cached WAV and a dataset row's columns."""
        return {key: value for key, value in asdict(self).items() if key != "audio"}


@dataclass
class _EngineOutput:
    """What an engine made before the common post-processing: samples at the engine's rate and, per word of
    the text, start/end seconds (None where unknown, or `None` as a whole when the engine has no times)."""

    audio: np.ndarray
    sampling_rate: int
    word_starts: list[float] | None = None
    word_ends: list[float] | None = None


class TTSBackend(ABC):
    """One TTS engine. Instances hold configuration only (engines are loaded per process, on first use), so
    they pickle into `synthesize_many`'s worker processes."""

    name: ClassVar[str]
    default_voice: ClassVar[str]

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies what makes the audio (engine and model version), so a cache never mixes two engines."""

    @abstractmethod
    def voices(self) -> list[str]:
        """Names accepted as `voice=`."""

    @property
    def supports_rate(self) -> bool:
        return True

    @property
    def supports_pitch(self) -> bool:
        return True

    @abstractmethod
    def _synthesize(self, text: str, voice: str, rate: float | None, pitch: float | None) -> _EngineOutput:
        """Run the engine; `text` is non-empty and the controls are supported."""

    def synthesize(
        self, text: str, voice: str | None = None, rate: float | None = None, pitch: float | None = None
    ) -> Synthesis:
        """Speech for `text` at 16 kHz; `rate`/`pitch` are factors relative to the voice (None = default)."""
        if not text.strip():
            raise ValueError("Cannot synthesize empty text.")
        if rate is not None and not self.supports_rate:
            raise ValueError(f"The {self.name} backend cannot change the speaking rate.")
        if pitch is not None and not self.supports_pitch:
            raise ValueError(f"The {self.name} backend cannot change the pitch.")
        if (rate is not None and rate <= 0) or (pitch is not None and pitch <= 0):
            raise ValueError(f"rate and pitch are positive factors, got rate={rate}, pitch={pitch}.")
        voice = voice or self.default_voice
        out = self._synthesize(text, voice, rate, pitch)
        # float64 as before: `resample` returns its input as it is when the rates agree, and does not clip.
        samples = pcm_to_float(np.asarray(out.audio)).astype(np.float64).reshape(-1)
        audio = np.clip(resample(samples, out.sampling_rate, SAMPLING_RATE), -1.0, 1.0).astype(np.float32)
        starts, ends = out.word_starts, out.word_ends
        if starts is not None and ends is not None:
            starts, ends = _consistent_times(starts, ends, audio.size / SAMPLING_RATE)
        return Synthesis(
            text=text,
            audio=audio,
            backend=self.name,
            voice=voice,
            words=text.split(),
            word_starts=starts,
            word_ends=ends,
            rate=rate,
            pitch=pitch,
        )


def _stable_seed(*parts: object) -> int:
    """A seed from `parts` that is the same in every process and run (unlike `hash`)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")
