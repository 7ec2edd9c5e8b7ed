"""Text-to-speech backends behind one interface, and cached parallel synthesis of many texts.

Stage II active selection and the spoken evaluation sets both need speech for arbitrary text. Which engine
makes it depends on the machine: espeak-ng and flite are offline Debian packages with many voices, any
transformers `text-to-audio` model (MMS-TTS / VITS) and Kokoro need the Hub. Every backend returns the same
`Synthesis` (16 kHz mono float32 and, where the engine knows them, word timestamps).

One module per part: `backend` (the interface and its result), `word_times` (word timestamps from engine
marks), `shared_library` (loading C engines with ctypes), `espeak_ng`, `flite` and `neural` (the engines),
`registry` (backends by name) and `batch` (`synthesize_many`: chosen voices, a cache, worker processes).
"""

from .backend import SAMPLING_RATE, EngineNotFoundError, Synthesis, TTSBackend
from .batch import SynthesisJob, cache_key, choose_job, load_cached, save_cached, synthesize_many
from .espeak_ng import DEFAULT_ESPEAK_VARIANTS, EspeakNGBackend
from .flite import FliteBackend
from .neural import KOKORO_VOICES, KokoroBackend, TransformersTTSBackend
from .registry import BACKENDS, get_backend

__all__ = [
    "BACKENDS",
    "DEFAULT_ESPEAK_VARIANTS",
    "KOKORO_VOICES",
    "SAMPLING_RATE",
    "EngineNotFoundError",
    "EspeakNGBackend",
    "FliteBackend",
    "KokoroBackend",
    "Synthesis",
    "SynthesisJob",
    "TTSBackend",
    "TransformersTTSBackend",
    "cache_key",
    "choose_job",
    "get_backend",
    "load_cached",
    "save_cached",
    "synthesize_many",
]
