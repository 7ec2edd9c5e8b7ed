"""Neural TTS models from the Hugging Face Hub: any transformers `text-to-audio` model, and Kokoro.

Both download their weights on first use, so they need network access or a local copy, unlike the Debian
engines; models are loaded once per process and device.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
import transformers
from transformers import pipeline

from .backend import EngineNotFoundError, TTSBackend, _EngineOutput, _stable_seed
from .word_times import _times_per_word


@functools.cache
def _text_to_audio_pipeline(model: str, device: str):
    try:
        return pipeline("text-to-audio", model=model, device=device)
    except OSError as error:
        raise EngineNotFoundError(
            f"Cannot load the text-to-audio model {model!r} ({error}); it is downloaded from the Hugging Face "
            "Hub, so this needs network access (unset HF_HUB_OFFLINE) or a local copy of the model."
        ) from error


class TransformersTTSBackend(TTSBackend):
    """Any transformers `text-to-audio` model (default MMS-TTS English, a VITS), loaded on first use.

    No word timestamps. Voices are speaker ids ("0", "1", ...) for multi-speaker models, else "default".
    `rate` is VITS's `speaking_rate` (other models cannot change it); pitch is not supported. VITS samples
    noise, so each synthesis is seeded from `seed`, the text and the voice, leaving the global RNG as it was.
    """

    name = "transformers"
    default_voice = "default"

    def __init__(self, model: str = "facebook/mms-tts-eng", device: str = "cpu", seed: int = 0):
        self.model, self.device, self.seed = model, device, seed

    @property
    def _pipeline(self):
        return _text_to_audio_pipeline(self.model, self.device)

    @property
    def version(self) -> str:
        commit = getattr(self._pipeline.model.config, "_commit_hash", None) or "local"
        return f"transformers {transformers.__version__} {self.model}@{commit}"

    def voices(self) -> list[str]:
        speakers = getattr(self._pipeline.model.config, "num_speakers", 1) or 1
        return [str(index) for index in range(speakers)] if speakers > 1 else [self.default_voice]

    @property
    def supports_rate(self) -> bool:
        return "speaking_rate" in inspect.signature(self._pipeline.model.forward).parameters

    @property
    def supports_pitch(self) -> bool:
        return False

    def _synthesize(self, text: str, voice: str, rate: float | None, pitch: float | None) -> _EngineOutput:
        if voice not in self.voices():
            raise ValueError(f"Unknown voice {voice!r} for {self.model}; known: {self.voices()}.")
        params: dict[str, Any] = {}
        if voice != self.default_voice:
            params["speaker_id"] = int(voice)
        if rate is not None:
            params["speaking_rate"] = rate
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_stable_seed(self.seed, text, voice))
            output = self._pipeline(text, forward_params=params)
        return _EngineOutput(np.asarray(output["audio"], dtype=np.float32), int(output["sampling_rate"]))


KOKORO_VOICES = (
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
    "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
    "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable",
    "bm_george", "bm_lewis",
)  # fmt: skip
_KOKORO_HINT = "install it with `pip install kokoro` (it downloads hexgrad/Kokoro-82M from the Hub)"


@functools.cache
def _kokoro_model(repo_id: str, device: str):
    from kokoro import KModel  # lazily: the optional `kokoro` extra

    return KModel(repo_id=repo_id).to(device).eval()


@functools.cache
def _kokoro_pipeline(lang_code: str, repo_id: str, device: str):
    """One KPipeline per accent ("a" American, "b" British), sharing one model."""
    from kokoro import KPipeline  # lazily: the optional `kokoro` extra

    return KPipeline(lang_code=lang_code, repo_id=repo_id, model=_kokoro_model(repo_id, device))


class KokoroBackend(TTSBackend):
    """Kokoro-82M (optional `kokoro` package, online): natural voices at 24 kHz, resampled.

    Word timestamps come from Kokoro's predicted durations (each token's `start_ts`/`end_ts`), per chunk of
    text, offset by the audio of the chunks before. `rate` is Kokoro's `speed`; pitch is not supported.
    """

    name = "kokoro"
    default_voice = "af_heart"

    def __init__(self, repo_id: str = "hexgrad/Kokoro-82M", device: str = "cpu"):
        if importlib.util.find_spec("kokoro") is None:
            raise EngineNotFoundError(f"The kokoro package is not installed: {_KOKORO_HINT}.")
        self.repo_id, self.device = repo_id, device

    @property
    def version(self) -> str:
        return f"kokoro {version('kokoro')} {self.repo_id}"

    def voices(self) -> list[str]:
        return list(KOKORO_VOICES)

    @property
    def supports_pitch(self) -> bool:
        return False

    def _synthesize(self, text: str, voice: str, rate: float | None, pitch: float | None) -> _EngineOutput:
        pipeline = _kokoro_pipeline(voice[0], self.repo_id, self.device)
        chunks, pieces, offset, sampling_rate = [], [], 0.0, 24000
        for result in pipeline(text, voice=voice, speed=rate or 1.0, split_pattern=None):
            audio = np.asarray(result.audio, dtype=np.float32).reshape(-1)
            for token in result.tokens or []:
                start, end = getattr(token, "start_ts", None), getattr(token, "end_ts", None)
                pieces.append(
                    (
                        token.text,
                        None if start is None else offset + start,
                        None if end is None else offset + end,
                    )
                )
            chunks.append(audio)
            offset += audio.size / sampling_rate
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        starts, ends = _times_per_word(text, pieces)
        return _EngineOutput(audio, sampling_rate, starts, ends)
