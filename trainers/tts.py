"""Text-to-speech backends behind one interface, and cached parallel synthesis of many texts.

Stage II active selection and the spoken evaluation sets both need speech for arbitrary text. Which engine
makes it depends on the machine: espeak-ng and flite are offline Debian packages with many voices, any
transformers `text-to-audio` model (MMS-TTS / VITS) and Kokoro need the Hub. Every backend therefore returns
the same `Synthesis`: 16 kHz mono float32 in [-1, 1] and, where the engine knows them, word timestamps.

Words are the whitespace-separated tokens of the input text, punctuation kept, because that is what
`trainers.data` joins back into text when it interleaves speech and text on word boundaries. A token the
engine says nothing for (a lone dash) gets a zero-length span where the previous word ends.

`rate` and `pitch` are relative factors, 1.0 being the voice's default (rate 1.2 speaks 20% faster), so a
random range means the same on every engine; each backend documents how it maps them.

espeak-ng and flite are driven through their shared libraries (ctypes) rather than their command-line tools,
because only the libraries say where words are in the audio. The whole text is synthesized at once, so the
prosody stays that of the sentence (synthesizing word by word would make every word sound like a sentence of
its own): flite's utterance holds each word's phone segments; espeak-ng reports each phoneme as it is
spoken, which is aligned to the phonemes of each word (see `EspeakNGBackend`). The libraries come with the
Debian packages (`libespeak-ng1` and `libflite1` are dependencies of `espeak-ng` and `flite`).
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import multiprocessing
import os
import random
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
from scipy.signal import resample_poly
from tqdm.auto import tqdm

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
        audio = to_16k(out.audio, out.sampling_rate)
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


def to_16k(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz in [-1, 1] (int16 input is scaled), resampled with a polyphase filter."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio / 32768.0
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    if sampling_rate != SAMPLING_RATE:
        divisor = math.gcd(SAMPLING_RATE, int(sampling_rate))
        audio = resample_poly(audio, SAMPLING_RATE // divisor, int(sampling_rate) // divisor)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Word timestamps shared by the engines


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of `text`."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def _word_index(char_index: int, spans: list[tuple[int, int]]) -> int:
    """The word containing `char_index`, or the next one when it falls on whitespace."""
    position = bisect.bisect_right([start for start, _ in spans], char_index) - 1
    if position < 0:
        return 0
    if char_index >= spans[position][1]:
        return min(position + 1, len(spans) - 1)
    return position


def _char_offsets(text: str, pieces: Iterable[str]) -> list[int]:
    """Where each engine token (a piece of the text, in order) starts in `text`.

    Engines split and normalize words their own way ("1234", "U.S.A.", "world" + ","), so their tokens are
    located in the text left to right; a piece not found verbatim is put where the search stands.
    """
    offsets, cursor = [], 0
    for piece in pieces:
        found = text.find(piece, cursor) if piece else -1
        if found >= 0:
            cursor = found
        offsets.append(cursor)
        if found >= 0:
            cursor += len(piece)
    return offsets


def _times_per_word(
    text: str, marks: Sequence[tuple[int, float, float]]
) -> tuple[list[float | None], list[float | None]]:
    """Per word of `text`, the earliest start and latest end of the engine marks `(char_index, start, end)`
    that fall inside it (None for a word without marks)."""
    spans = _word_spans(text)
    starts: list[float | None] = [None] * len(spans)
    ends: list[float | None] = [None] * len(spans)
    for char_index, start, end in marks:
        word = _word_index(char_index, spans)
        starts[word] = start if starts[word] is None else min(starts[word], start)
        ends[word] = end if ends[word] is None else max(ends[word], end)
    return starts, ends


def _consistent_times(
    starts: Sequence[float | None], ends: Sequence[float | None], duration: float
) -> tuple[list[float], list[float]]:
    """Fill words without times with a zero-length span at the previous word's end, and make the times
    non-decreasing, each end at or after its start, all within the audio."""
    filled_starts, filled_ends, previous_end, previous_start = [], [], 0.0, 0.0
    for start, end in zip(starts, ends):
        if start is None:
            start, end = previous_end, previous_end
        start = min(max(start, previous_start), duration)
        end = min(max(end if end is not None else start, start), duration)
        filled_starts.append(round(float(start), 4))
        filled_ends.append(round(float(end), 4))
        previous_start, previous_end = start, max(previous_end, end)
    return filled_starts, filled_ends


def _align(reference: Sequence[str], observed: Sequence[str]) -> list[int | None]:
    """For each observed symbol, the index of the reference symbol it aligns to under the minimum edit
    distance (None for an inserted one). Rows are computed with numpy: the within-row deletion chain is a
    running minimum of `cost - column`."""
    columns = np.arange(len(reference) + 1)
    reference_array = np.asarray(reference, dtype=object)
    table = np.zeros((len(observed) + 1, len(reference) + 1), dtype=np.int64)
    table[0] = columns
    for row, symbol in enumerate(observed, start=1):
        substitute = table[row - 1, :-1] + (reference_array != symbol)
        best = np.concatenate([[row], np.minimum(substitute, table[row - 1, 1:] + 1)])
        table[row] = np.minimum.accumulate(best - columns) + columns
    aligned: list[int | None] = [None] * len(observed)
    row, column = len(observed), len(reference)
    while row > 0:
        if column > 0 and table[row, column] == table[row - 1, column - 1] + (
            reference[column - 1] != observed[row - 1]
        ):
            aligned[row - 1] = column - 1
            row, column = row - 1, column - 1
        elif table[row, column] == table[row - 1, column] + 1:
            row -= 1
        else:
            column -= 1
    return aligned


def _find_library(name: str, explicit: str | None, install_hint: str) -> str:
    """A loadable path or soname for shared library `name` (e.g. "espeak-ng"), or a clear error."""
    if explicit is not None:
        if not os.path.exists(explicit):
            raise EngineNotFoundError(f"{explicit} does not exist: {install_hint}.")
        return explicit
    found = ctypes.util.find_library(name)
    if found is None:
        raise EngineNotFoundError(f"The lib{name} shared library is not installed: {install_hint}.")
    return found


def _declare(function, argtypes: list, restype=None) -> None:
    function.argtypes, function.restype = argtypes, restype


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("fname", ctypes.c_char_p),
        ("fbase", ctypes.c_void_p),
        ("sname", ctypes.c_char_p),
        ("saddr", ctypes.c_void_p),
    ]


def _library_file(function) -> str:
    """The real file a loaded function comes from (libflite.so.1 -> .../libflite.so.2.2): the version of an
    engine that has no version call, for cache keys."""
    info = _DlInfo()
    ctypes.CDLL(None).dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info))
    return os.path.realpath(info.fname.decode()) if info.fname else "unknown"


def _load_library(path: str, install_hint: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(path)
    except OSError as error:
        raise EngineNotFoundError(f"Cannot load {path} ({error}): {install_hint}.") from error


# ---------------------------------------------------------------------------------------------------------
# espeak-ng

_ESPEAK_HINT = "install it with `apt-get install espeak-ng`"
# Ordinary-sounding variants (male, female, and the Klatt synthesizer); `variants=None` takes all ~100.
DEFAULT_ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
DEFAULT_ESPEAK_VARIANTS += ("klatt", "klatt2", "klatt3", "klatt4")
_ESPEAK_DEFAULT_WPM = 175
_ESPEAK_EVENT_PHONEME = 7
_ESPEAK_PARAM_RATE, _ESPEAK_PARAM_PITCH = 1, 3
_ESPEAK_STRESS_MARKS = "',%="


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # a union; phoneme events hold the phoneme's name here
    ]


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


def _is_sound(phoneme: str) -> bool:
    """espeak-ng names pauses "_", "_:", "_!"...; everything else is a speech sound."""
    return bool(phoneme) and not phoneme.startswith("_") and phoneme != ";"


class _EspeakEngine:
    """libespeak-ng in synchronous mode, in this process: one global synthesizer, hence the lock."""

    def __init__(self, library: str):
        lib = _load_library(library, _ESPEAK_HINT)
        pointer = ctypes.c_void_p
        _declare(
            lib.espeak_Initialize, [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        )
        synth_args = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
        ]
        _declare(lib.espeak_Synth, [*synth_args, pointer, pointer], ctypes.c_int)
        _declare(lib.espeak_SetVoiceByName, [ctypes.c_char_p], ctypes.c_int)
        _declare(lib.espeak_SetParameter, [ctypes.c_int, ctypes.c_int, ctypes.c_int], ctypes.c_int)
        _declare(lib.espeak_SetSynthCallback, [_ESPEAK_CALLBACK])
        _declare(
            lib.espeak_ListVoices,
            [ctypes.POINTER(_EspeakVoice)],
            ctypes.POINTER(ctypes.POINTER(_EspeakVoice)),
        )
        _declare(
            lib.espeak_TextToPhonemes, [ctypes.POINTER(pointer), ctypes.c_int, ctypes.c_int], ctypes.c_char_p
        )
        _declare(lib.espeak_Info, [pointer], ctypes.c_char_p)
        # AUDIO_OUTPUT_SYNCHRONOUS, default buffer and data path, phoneme events, no exit() on errors.
        self.sampling_rate = lib.espeak_Initialize(2, 0, None, 0x8000 | 0x0001)
        if self.sampling_rate <= 0:
            raise EngineNotFoundError(f"espeak-ng could not find its voice data: {_ESPEAK_HINT}.")
        self.version = lib.espeak_Info(None).decode()
        self._lib, self._lock, self._voice = lib, threading.Lock(), ""
        self._chunks: list[np.ndarray] = []
        self._phones: list[tuple[str, int]] = []
        self._word_phonemes: dict[tuple[str, str], list[str]] = {}
        self._voice_lists: dict[str, list[tuple[str, str]]] = {}
        self._callback = _ESPEAK_CALLBACK(self._collect)  # kept referenced: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count: int, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        index = 0
        while events[index].type != 0:  # espeakEVENT_LIST_TERMINATED
            event = events[index]
            if event.type == _ESPEAK_EVENT_PHONEME:
                self._phones.append((event.id.decode(errors="replace"), event.sample))
            index += 1
        return 0

    def list_voices(self, language: str) -> list[tuple[str, str]]:
        """(language code, identifier) of the installed voices for `language` ("variant" for variants);
        cached, as espeak-ng reads the voice files at each listing."""
        if language not in self._voice_lists:
            with self._lock:
                listed = self._lib.espeak_ListVoices(ctypes.byref(_EspeakVoice(languages=language.encode())))
                voices, index = [], 0
                while listed[index]:
                    voice = listed[index].contents
                    # `languages` is a priority byte, then the language code.
                    voices.append((voice.languages[1:].decode(), voice.identifier.decode()))
                    index += 1
            self._voice_lists[language] = voices
        return self._voice_lists[language]

    def _set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"Unknown espeak-ng voice {voice!r}.")
            self._voice = voice

    def synthesize(
        self, text: str, voice: str, wpm: int, pitch: int
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 samples and, in order, each phoneme (pauses included) with the sample where it starts."""
        with self._lock:
            self._set_voice(voice)
            self._lib.espeak_SetParameter(_ESPEAK_PARAM_RATE, wpm, 0)
            self._lib.espeak_SetParameter(_ESPEAK_PARAM_PITCH, pitch, 0)
            self._chunks, self._phones = [], []
            data = text.encode()
            # The whole text from its start (POS_CHARACTER), UTF-8 input (espeakCHARS_UTF8).
            status = self._lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
            if status != 0:
                raise RuntimeError(f"espeak-ng failed with status {status} on {text!r}.")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return audio, self._phones

    def word_phonemes(self, word: str, voice: str) -> list[str]:
        """The speech sounds espeak-ng gives `word` said alone with `voice` (cached)."""
        key = (voice, word)
        if key not in self._word_phonemes:
            with self._lock:
                self._set_voice(voice)
                buffer = ctypes.create_string_buffer(word.encode())
                cursor, phonemes = ctypes.c_void_p(ctypes.addressof(buffer)), []
                while cursor.value:  # one clause per call; the cursor becomes NULL at the end
                    # UTF-8 text; phonemes separated by "|" (the separator goes in bits 8-23).
                    phonemes.append(
                        self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), 1, ord("|") << 8).decode()
                    )
            symbols = (
                symbol.strip(_ESPEAK_STRESS_MARKS) for symbol in re.split(r"[|\s]+", " ".join(phonemes))
            )
            if len(self._word_phonemes) > 100_000:
                self._word_phonemes.clear()
            self._word_phonemes[key] = [symbol for symbol in symbols if _is_sound(symbol)]
        return self._word_phonemes[key]


@functools.cache
def _espeak_engine(library: str) -> _EspeakEngine:
    return _EspeakEngine(library)


def _phone_word_times(
    word_phonemes: Sequence[Sequence[str]], phones: Sequence[tuple[str, int]], num_samples: int
) -> tuple[list[int | None], list[int | None]]:
    """Word start/end samples from the phonemes spoken in context, aligned by edit distance to the words'
    own phonemes. A phoneme that aligns to none (a reduction in context) belongs to the word being spoken; a
    word ends where the phoneme after its last one (often a pause) starts. Words with no sound get None."""
    reference = [symbol for phonemes in word_phonemes for symbol in phonemes]
    owner = [word for word, phonemes in enumerate(word_phonemes) for _ in phonemes]
    sounds = [index for index, (name, _) in enumerate(phones) if _is_sound(name)]
    aligned = _align(reference, [phones[index][0] for index in sounds])
    words = [None if position is None else owner[position] for position in aligned]
    known = [word for word in words if word is not None]
    current = known[0] if known else 0
    starts: list[int | None] = [None] * len(word_phonemes)
    ends: list[int | None] = [None] * len(word_phonemes)
    for index, word in zip(sounds, words):
        current = current if word is None else word
        if starts[current] is None:
            starts[current] = phones[index][1]
        ends[current] = phones[index + 1][1] if index + 1 < len(phones) else num_samples
    return starts, ends


class EspeakNGBackend(TTSBackend):
    """espeak-ng (Debian `espeak-ng`): formant synthesis, robotic but fast, with many English accents.

    Voices are `accent` or `accent+variant` (e.g. "en-us", "en-gb-scotland+f3"): the installed English
    accents times `variants` (a curated set by default, None for all ~100).

    Word timestamps: the whole text is synthesized at once (sentence prosody) with phoneme events, which give
    the sample where each spoken phoneme starts; they are aligned by edit distance to the phonemes of each
    word said alone. espeak-ng's own word events are not used: their text positions drift after dashes and
    some words ("for the") are spoken as one unit with a single event, while the phonemes still separate
    them. `rate` scales the default 175 words per minute (clipped to 80-450); `pitch` moves espeak-ng's 0-99
    pitch setting (50 by default) by 100 * (pitch - 1), roughly proportional in Hz near 1.
    """

    name = "espeak-ng"
    default_voice = "en-us"

    def __init__(
        self,
        library: str | None = None,
        language: str = "en",
        variants: Sequence[str] | None = DEFAULT_ESPEAK_VARIANTS,
    ):
        self.library = _find_library("espeak-ng", library, _ESPEAK_HINT)
        self.language = language
        self.variants = None if variants is None else tuple(variants)

    @property
    def _engine(self) -> _EspeakEngine:
        return _espeak_engine(self.library)

    @property
    def version(self) -> str:
        return f"espeak-ng {self._engine.version}"

    def _installed_variants(self) -> list[str]:
        identifiers = [identifier for _, identifier in self._engine.list_voices("variant")]
        return [identifier.split("/", 1)[-1] for identifier in identifiers if " " not in identifier]

    def _accents(self) -> dict[str, str]:
        """Language code -> voice file identifier ("en-gb" -> "gmw/en"): espeak-ng finds voices by file."""
        # MBROLA voices ("mb/") need the separate mbrola package; variants ("!v/") are listed apart.
        listed = self._engine.list_voices(self.language)
        return {code: identifier for code, identifier in listed if not identifier.startswith(("mb/", "!v/"))}

    def voices(self) -> list[str]:
        installed = self._installed_variants()
        variants = (
            [""] + installed
            if self.variants is None
            else [v for v in self.variants if not v or v in installed]
        )
        accents = sorted(self._accents())
        return [accent + (f"+{variant}" if variant else "") for accent in accents for variant in variants]

    def _synthesize(self, text: str, voice: str, rate: float | None, pitch: float | None) -> _EngineOutput:
        accent, _, variant = voice.partition("+")
        if variant and variant not in self._installed_variants():
            raise ValueError(f"Unknown espeak-ng variant {variant!r} in voice {voice!r}.")
        identifier = self._accents().get(accent, accent) + (f"+{variant}" if variant else "")
        wpm = int(np.clip(round(_ESPEAK_DEFAULT_WPM * (rate or 1.0)), 80, 450))
        pitch_setting = int(np.clip(round(50 + 100 * ((pitch or 1.0) - 1.0)), 0, 99))
        engine = self._engine
        audio, phones = engine.synthesize(text, identifier, wpm, pitch_setting)
        word_phonemes = [engine.word_phonemes(word, identifier) for word in text.split()]
        starts, ends = _phone_word_times(word_phonemes, phones, audio.size)
        rate_hz = engine.sampling_rate
        return _EngineOutput(
            audio,
            rate_hz,
            [None if start is None else start / rate_hz for start in starts],
            [None if end is None else end / rate_hz for end in ends],
        )


# ---------------------------------------------------------------------------------------------------------
# flite

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
        offsets = _char_offsets(text, [name for name, _, _ in tokens])
        marks = [
            (offset, start, end) for offset, (_, start, end) in zip(offsets, tokens) if start is not None
        ]
        starts, ends = _times_per_word(text, marks)
        return _EngineOutput(audio, sampling_rate, starts, ends)


# ---------------------------------------------------------------------------------------------------------
# transformers text-to-audio models


@functools.cache
def _text_to_audio_pipeline(model: str, device: str):
    from transformers import pipeline

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
        import transformers

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
        import torch

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


# ---------------------------------------------------------------------------------------------------------
# Kokoro

KOKORO_VOICES = (
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
    "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
    "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable",
    "bm_george", "bm_lewis",
)  # fmt: skip
_KOKORO_HINT = "install it with `pip install kokoro` (it downloads hexgrad/Kokoro-82M from the Hub)"


@functools.cache
def _kokoro_model(repo_id: str, device: str):
    from kokoro import KModel

    return KModel(repo_id=repo_id).to(device).eval()


@functools.cache
def _kokoro_pipeline(lang_code: str, repo_id: str, device: str):
    """One KPipeline per accent ("a" American, "b" British), sharing one model."""
    from kokoro import KPipeline

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
        from importlib.metadata import version

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
        offsets = _char_offsets(text, [piece for piece, _, _ in pieces])
        marks = [(char, start, end) for char, (_, start, end) in zip(offsets, pieces) if start is not None]
        starts, ends = _times_per_word(text, marks)
        return _EngineOutput(audio, sampling_rate, starts, ends)


# ---------------------------------------------------------------------------------------------------------
# Registry

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


# ---------------------------------------------------------------------------------------------------------
# Cached, parallel synthesis of many texts


@dataclass(frozen=True)
class SynthesisJob:
    """One text with the voice and controls chosen for it."""

    text: str
    voice: str
    rate: float | None
    pitch: float | None


def _stable_seed(*parts: object) -> int:
    """A seed from `parts` that is the same in every process and run (unlike `hash`)."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def choose_job(
    text: str,
    voices: Sequence[str],
    seed: int,
    rate_range: tuple[float, float] | None,
    pitch_range: tuple[float, float] | None,
) -> SynthesisJob:
    """Voice, rate and pitch for `text`, drawn from a generator seeded by (seed, text): the same text gets the
    same choice whatever else is in the list or where, so appending texts keeps the cache valid."""
    rng = random.Random(_stable_seed(seed, text))
    voice = rng.choice(list(voices))
    rate = None if rate_range is None else round(rng.uniform(*rate_range), 3)
    pitch = None if pitch_range is None else round(rng.uniform(*pitch_range), 3)
    return SynthesisJob(text, voice, rate, pitch)


def cache_key(backend: TTSBackend, job: SynthesisJob) -> str:
    """Hash of everything that determines the audio: text, voice, rate, pitch, backend and its version."""
    payload = [backend.name, backend.version, job.text, job.voice, job.rate, job.pitch]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def _cache_paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / key[:2]
    return folder / f"{key}.wav", folder / f"{key}.json"


def _quantize(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so a killed run never leaves a truncated file behind."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def save_cached(synthesis: Synthesis, cache_dir: str | Path, key: str) -> Synthesis:
    """Store `synthesis` as 16-bit WAV + JSON sidecar (written last: its presence marks a complete entry)
    and return it as it will read back, so fresh and cached results are identical."""
    wav_path, json_path = _cache_paths(cache_dir, key)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    samples = _quantize(synthesis.audio)
    _write_atomic(wav_path, lambda path: soundfile.write(path, samples, SAMPLING_RATE, format="WAV"))
    synthesis.audio = samples.astype(np.float32) / 32767
    synthesis.audio_path = str(wav_path)
    _write_atomic(json_path, lambda path: path.write_text(json.dumps(synthesis.metadata())))
    return synthesis


def load_cached(cache_dir: str | Path, key: str) -> Synthesis | None:
    """The cached synthesis for `key`, or None when it was never completed."""
    wav_path, json_path = _cache_paths(cache_dir, key)
    if not (json_path.exists() and wav_path.exists()):
        return None
    metadata = json.loads(json_path.read_text())
    samples, _ = soundfile.read(wav_path, dtype="int16")
    return Synthesis(audio=samples.astype(np.float32) / 32767, **{**metadata, "audio_path": str(wav_path)})


def _run_job(backend: TTSBackend, job: SynthesisJob, cache_dir: str | None, key: str) -> Synthesis:
    """Synthesize one job (in a worker process) and cache it there, so finished work survives a crash."""
    synthesis = backend.synthesize(job.text, voice=job.voice, rate=job.rate, pitch=job.pitch)
    return synthesis if cache_dir is None else save_cached(synthesis, cache_dir, key)


def synthesize_many(
    texts: Sequence[str],
    backend: TTSBackend | str = "espeak-ng",
    voices: Sequence[str] | None = None,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    rate_range: tuple[float, float] | None = (0.85, 1.15),
    pitch_range: tuple[float, float] | None = (0.9, 1.1),
    progress: bool = True,
) -> list[Synthesis]:
    """Synthesize `texts` with voices drawn from `voices` (default: all of the backend's) and rate/pitch
    factors drawn from the ranges (None: the voice's default; ignored where the backend has no such
    control), deterministically per text given `seed`. Returns results in input order.

    With `cache_dir`, each result is stored under a hash of what determines it and reused: cached items are
    not synthesized again, so a killed run resumes where it stopped. Work runs in `num_workers` spawned
    processes (default: one per CPU; 0 or 1: in this process, which suits backends holding a large model
    and short lists, as starting a worker takes about a second). A script that uses workers must call this
    under `if __name__ == "__main__":`, as spawned workers import the script again.
    """
    backend = get_backend(backend) if isinstance(backend, str) else backend
    if any(not text.strip() for text in texts):
        raise ValueError("synthesize_many got an empty text.")
    voices = list(voices) if voices is not None else backend.voices()
    rate_range = rate_range if backend.supports_rate else None
    pitch_range = pitch_range if backend.supports_pitch else None
    jobs = [choose_job(text, voices, seed, rate_range, pitch_range) for text in texts]
    cache = None if cache_dir is None else str(cache_dir)
    keys = [cache_key(backend, job) if cache else str(index) for index, job in enumerate(jobs)]
    done: dict[str, Synthesis] = {}
    if cache:
        done = {key: hit for key in dict.fromkeys(keys) if (hit := load_cached(cache, key)) is not None}
    pending = {key: job for key, job in zip(keys, jobs) if key not in done}
    bar = tqdm(
        total=len(done) + len(pending), initial=len(done), desc=f"TTS {backend.name}", disable=not progress
    )
    with bar:
        for key, synthesis in _run_pending(backend, pending, cache, num_workers):
            done[key] = synthesis
            bar.update()
    return [done[key] for key in keys]


def _run_pending(
    backend: TTSBackend, pending: dict[str, SynthesisJob], cache_dir: str | None, num_workers: int | None
) -> Iterable[tuple[str, Synthesis]]:
    """Yield (key, synthesis) as jobs finish, in worker processes when there is more than one worker.

    Workers are spawned, not forked: the parent may hold torch threads or a loaded engine, which a fork would
    copy in an unusable state.
    """
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    workers = min(workers, len(pending))
    if workers <= 1:
        for key, job in pending.items():
            yield key, _run_job(backend, job, cache_dir, key)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
        futures = {
            executor.submit(_run_job, backend, job, cache_dir, key): key for key, job in pending.items()
        }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # on an error or an interrupt, drop the queued jobs instead of waiting for all of them
            for future in futures:
                future.cancel()
