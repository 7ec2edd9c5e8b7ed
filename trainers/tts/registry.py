"""The backends by name, for configuration files and command lines (`--tts_backend espeak-ng`)."""

from __future__ import annotations

from typing import Any

from .backend import TTSBackend
from .espeak_ng import EspeakNGBackend
from .flite import FliteBackend
from .neural import KokoroBackend, TransformersTTSBackend

BACKENDS: dict[str, type[TTSBackend]] = {
    "espeak-ng": EspeakNGBackend,
    "flite": FliteBackend,
    "transformers": TransformersTTSBackend,
    "kokoro": KokoroBackend,
}
_ALIASES = {"espeak": "espeak-ng", "espeakng": "espeak-ng", "mms": "transformers", "vits": "transformers"}


def get_backend(name: str, **kwargs: Any) -> TTSBackend:
    """The backend called `name` (see `BACKENDS`), built with `kwargs`; raises `EngineNotFoundError` naming the
    package to install when its engine is missing."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise ValueError(f"Unknown TTS backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    return BACKENDS[key](**kwargs)
