"""flite through libflite: CMU diphone and clustergen US voices, with exact word timestamps.

The whole text is synthesized at once, so the prosody stays that of the sentence; flite's utterance holds each
word's phone segments, which give the words' spans (see `FliteBackend`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path

import numpy as np

from .backend import EngineNotFoundError, TTSBackend, _EngineOutput
from .shared_library import _declare, _find_library, _library_file, _load_library
from .word_times import _times_per_word

_FLITE_HINT = "install it with `apt-get install flite`"
_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# Mean F0 (Hz) of the clustergen voices, which do not expose it as a feature; measured on flite 2.2.
# `rms` ignores `int_f0_target_mean`, so its pitch does not change.
_FLITE_F0_MEANS = {"slt": 165.0, "awb": 120.0, "rms": 104.0}


class _FliteWave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _FliteVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p)]


class _FliteEngine:
    """libflite in this process, with each voice registered once; flite keeps one set of features per voice,
    hence the lock around setting them and synthesizing."""

    def __init__(self, library: str, library_dir: str | None):
        lib = _load_library(library, _FLITE_HINT)
        pointer, text, real = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float
        _declare(lib.flite_init, [], ctypes.c_int)
        _declare(lib.flite_synth_text, [text, pointer], pointer)
        _declare(lib.utt_wave, [pointer], ctypes.POINTER(_FliteWave))
        _declare(lib.utt_relation, [pointer, text], pointer)
        _declare(lib.delete_utterance, [pointer])
        for name in ("relation_head", "item_next", "item_daughter", "item_prev"):
            _declare(getattr(lib, name), [pointer], pointer)
        _declare(lib.path_to_item, [pointer, text], pointer)
        _declare(lib.item_feat_float, [pointer, text], real)
        _declare(lib.item_feat_string, [pointer, text], text)
        _declare(lib.flite_get_param_float, [pointer, text, real], real)
        _declare(lib.flite_feat_set_float, [pointer, text, real])
        _declare(lib.flite_feat_remove, [pointer, text], ctypes.c_int)
        lib.flite_init()
        self.version = f"flite {os.path.basename(_library_file(lib.flite_init))}"
        self._lib, self._library_dir, self._lock = lib, library_dir, threading.Lock()
        self._libc = ctypes.CDLL(None)
        self._voices: dict[str, tuple[int, float, float | None]] = {}

    def _voice(self, name: str) -> tuple[int, float, float | None]:
        """(voice pointer, default duration stretch, default mean F0 or None), registered on first use."""
        if name not in self._voices:
            library = _load_library(_flite_voice_library(name, self._library_dir), _FLITE_HINT)
            register = getattr(library, f"register_cmu_us_{name}")
            _declare(register, [ctypes.c_char_p], ctypes.POINTER(_FliteVoice))
            voice = register(None)
            features = voice.contents.features
            stretch = self._lib.flite_get_param_float(features, b"duration_stretch", 1.0)
            f0 = self._lib.flite_get_param_float(features, b"int_f0_target_mean", -1.0)
            self._voices[name] = (ctypes.addressof(voice.contents), stretch, f0 if f0 > 0 else None)
        return self._voices[name]

    def synthesize(
        self, text: str, voice: str, rate: float | None, pitch: float | None
    ) -> tuple[np.ndarray, int, list[tuple[str, float | None, float | None]]]:
        """int16 samples, their rate, and per flite token its text and the span of its words' segments."""
        with self._lock:
            address, stretch, f0 = self._voice(voice)
            features = _FliteVoice.from_address(address).features
            self._lib.flite_feat_set_float(features, b"duration_stretch", stretch / (rate or 1.0))
            if pitch is None and f0 is None:
                self._lib.flite_feat_remove(features, b"int_f0_target_mean")
            else:
                mean = f0 if f0 is not None else _FLITE_F0_MEANS.get(voice, 100.0)
                self._lib.flite_feat_set_float(features, b"int_f0_target_mean", mean * (pitch or 1.0))
            self._libc.srand(0)  # clustergen voices draw excitation noise from rand(): same text, same audio
            utterance = self._lib.flite_synth_text(text.encode(), address)
            try:
                wave = self._lib.utt_wave(utterance).contents
                audio = np.ctypeslib.as_array(wave.samples, (wave.num_samples,)).copy()
                return audio, wave.sample_rate, self._token_times(utterance)
            finally:
                self._lib.delete_utterance(utterance)

    def _token_times(self, utterance: int) -> list[tuple[str, float | None, float | None]]:
        """Each token's text and the first/last phone segment times of the words it was expanded into
        ("1234" is several words, a lone dash none)."""
        lib, tokens = self._lib, []
        token = lib.relation_head(lib.utt_relation(utterance, b"Token"))
        while token:
            starts, ends = [], []
            word = lib.item_daughter(token)
            while word:
                first = lib.path_to_item(word, b"R:SylStructure.daughter1.daughter1.R:Segment")
                last = lib.path_to_item(word, b"R:SylStructure.daughtern.daughtern.R:Segment")
                if first and last:
                    previous = lib.item_prev(first)
                    starts.append(lib.item_feat_float(previous, b"end") if previous else 0.0)
                    ends.append(lib.item_feat_float(last, b"end"))
                word = lib.item_next(word)
            name = lib.item_feat_string(token, b"name").decode(errors="replace")
            tokens.append((name, min(starts, default=None), max(ends, default=None)))
            token = lib.item_next(token)
        return tokens


def _flite_voice_library(voice: str, library_dir: str | None) -> str:
    if voice not in _FLITE_VOICES:
        raise ValueError(f"Unknown flite voice {voice!r}; known: {', '.join(_FLITE_VOICES)}.")
    name = f"flite_cmu_us_{voice}"
    if library_dir is None:
        return _find_library(name, None, _FLITE_HINT)
    return _find_library(name, _library_in(library_dir, name), _FLITE_HINT)


def _library_in(directory: str, name: str) -> str:
    """The file of shared library `name` in `directory` (Linux or macOS naming)."""
    candidates = sorted(Path(directory).glob(f"lib{name}.so*")) + sorted(
        Path(directory).glob(f"lib{name}*.dylib")
    )
    return str(candidates[0]) if candidates else os.path.join(directory, f"lib{name}.so")


@functools.cache
def _flite_engine(library: str, library_dir: str | None) -> _FliteEngine:
    return _FliteEngine(library, library_dir)


class FliteBackend(TTSBackend):
    """flite (Debian `flite`): CMU diphone (kal 8 kHz, kal16) and clustergen (awb, rms, slt) US voices,
    clearer than espeak-ng and slower.

    Word timestamps are exact: flite's utterance holds each word's phone segments, the first segment's start
    and the last one's end give the word's span. `rate` divides the voice's `duration_stretch`; `pitch`
    scales its target mean F0 (`int_f0_target_mean`; rms ignores it). `library_dir` points at a folder with
    libflite and the voice libraries instead of the system's.
    """

    name = "flite"
    default_voice = "slt"

    def __init__(self, library_dir: str | None = None):
        self.library_dir = library_dir
        explicit = None if library_dir is None else _library_in(library_dir, "flite")
        self.library = _find_library("flite", explicit, _FLITE_HINT)

    @property
    def _engine(self) -> _FliteEngine:
        return _flite_engine(self.library, self.library_dir)

    @property
    def version(self) -> str:
        return self._engine.version

    def voices(self) -> list[str]:
        installed = []
        for voice in _FLITE_VOICES:
            try:
                _flite_voice_library(voice, self.library_dir)
            except EngineNotFoundError:
                continue
            installed.append(voice)
        return installed

    def _synthesize(self, text: str, voice: str, rate: float | None, pitch: float | None) -> _EngineOutput:
        audio, sampling_rate, tokens = self._engine.synthesize(text, voice, rate, pitch)
        starts, ends = _times_per_word(text, tokens)
        return _EngineOutput(audio, sampling_rate, starts, ends)
