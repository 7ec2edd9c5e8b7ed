"""espeak-ng through libespeak-ng: formant voices in many English accents, with word timestamps.

The whole text is synthesized at once, so the prosody stays that of the sentence (synthesizing word by word
would make every word sound like a sentence of its own). espeak-ng reports each phoneme as it is spoken;
those are aligned to the phonemes of each word said alone, which places the words (see `EspeakNGBackend`).
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from .backend import EngineNotFoundError, TTSBackend, _EngineOutput
from .shared_library import _declare, _find_library, _load_library

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


def _align(reference: Sequence[str], observed: Sequence[str]) -> list[int | None]:
    """For each observed symbol, the index of the reference symbol it aligns to under the minimum edit
    distance (None for an inserted one): the matched and substituted symbols of a Levenshtein alignment."""
    aligned: list[int | None] = [None] * len(observed)
    for tag, reference_start, _, observed_start, observed_end in Levenshtein.opcodes(reference, observed):
        if tag in ("equal", "replace"):  # blocks of one-to-one pairs
            for offset in range(observed_end - observed_start):
                aligned[observed_start + offset] = reference_start + offset
    return aligned


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
