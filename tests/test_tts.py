"""TTS backends (espeak-ng, flite, transformers, Kokoro) and cached parallel synthesis.

Tests that run the Debian engines are marked `assets` and skipped, with the package to install, where the
engine is missing. The transformers backend runs on a tiny random VITS built here; Kokoro on a stand-in module
(the real one downloads its model).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ToneBackend

from trainers.tts import (
    EngineNotFoundError,
    EspeakNGBackend,
    FliteBackend,
    KokoroBackend,
    Synthesis,
    TTSBackend,
    cache_key,
    choose_job,
    get_backend,
    synthesize_many,
)
from trainers.tts.backend import _EngineOutput
from trainers.tts.espeak_ng import _align
from trainers.tts.neural import _kokoro_model, _kokoro_pipeline
from trainers.tts.word_times import _consistent_times


def needs(engine: str):
    """Marks for a test that runs a Debian TTS engine: `assets`, skipped with the install command if absent."""
    return [
        pytest.mark.assets,
        pytest.mark.skipif(shutil.which(engine) is None, reason=f"needs `apt-get install {engine}`"),
    ]


ENGINES = [pytest.param(engine, marks=needs(engine)) for engine in ("espeak-ng", "flite")]
TEXT = "Hello world, this is a test -- of the given voices: 42 cats and the U.S.A. agree!"


def check_synthesis(synthesis: Synthesis, text: str) -> None:
    """16 kHz mono float32 in [-1, 1] whose word timestamps are ordered and inside the audio."""
    audio = synthesis.audio
    assert synthesis.sampling_rate == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size > 0 and np.abs(audio).max() <= 1.0
    assert synthesis.text == text and synthesis.words == text.split()
    starts, ends = np.array(synthesis.word_starts), np.array(synthesis.word_ends)
    assert len(starts) == len(ends) == len(synthesis.words)
    assert np.all(np.diff(starts) >= 0) and np.all(ends >= starts) and np.all(np.diff(ends) >= 0)
    assert ends[-1] <= audio.size / 16000 + 1e-3


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_output_and_word_timestamps(engine):
    synthesis = get_backend(engine).synthesize(TEXT)
    check_synthesis(synthesis, TEXT)
    threshold = 0.05 * np.abs(synthesis.audio).max()
    for word, start, end in zip(synthesis.words, synthesis.word_starts, synthesis.word_ends):
        span = synthesis.audio[int(start * 16000) : int(end * 16000)]
        if any(character.isalnum() for character in word):  # every spoken word has sound in its span
            assert end - start > 0.03 and np.abs(span).max() > threshold, word
        else:  # "--" is a pause, not a word
            assert end - start < 0.03, word
    assert synthesis.word_ends[-1] > 0.9 * synthesis.duration - 0.3  # the last word is near the end


@pytest.mark.parametrize("engine", ENGINES)
def test_voices_differ(engine):
    backend = get_backend(engine)
    voices = backend.voices()
    assert len(voices) >= (100 if engine == "espeak-ng" else 4)
    chosen = [voices[0], voices[len(voices) // 2], voices[-1]]
    audios = [backend.synthesize("Voices should not all sound alike.", voice=voice).audio for voice in chosen]
    for index, first in enumerate(audios):
        for second in audios[index + 1 :]:
            assert first.size != second.size or not np.allclose(first, second, atol=1e-3)


@pytest.mark.parametrize("engine", ENGINES)
def test_rate_changes_duration_and_pitch_changes_audio(engine):
    backend = get_backend(engine)
    text = "A slower voice takes longer to say the same sentence."
    slow, fast = (backend.synthesize(text, rate=rate) for rate in (0.7, 1.4))
    assert fast.duration < 0.8 * slow.duration
    check_synthesis(slow, text)
    check_synthesis(fast, text)
    low, high = (backend.synthesize(text, voice=backend.voices()[0], pitch=pitch) for pitch in (0.8, 1.25))
    assert low.pitch == 0.8 and high.pitch == 1.25
    assert low.audio.size != high.audio.size or not np.allclose(low.audio, high.audio, atol=1e-3)


@pytest.mark.assets
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs `apt-get install espeak-ng`")
def test_espeak_words_spoken_as_one_unit_get_their_own_spans():
    """espeak-ng says "for the" as one word (one word event); the phoneme alignment still splits it."""
    synthesis = EspeakNGBackend().synthesize("Look for the given name.")
    durations = dict(zip(synthesis.words, np.subtract(synthesis.word_ends, synthesis.word_starts)))
    assert all(duration > 0.04 for duration in durations.values()), durations


@pytest.mark.assets
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs `apt-get install espeak-ng`")
def test_espeak_unknown_voice():
    with pytest.raises(ValueError, match="variant"):
        EspeakNGBackend().synthesize("hi", voice="en-us+nosuchvariant")
    with pytest.raises(ValueError, match="voice"):
        EspeakNGBackend().synthesize("hi", voice="xx-nowhere")


def test_missing_engines_name_their_package(tmp_path):
    bogus = str(tmp_path / "libespeak-ng.so.1")
    with pytest.raises(EngineNotFoundError, match="apt-get install espeak-ng"):
        EspeakNGBackend(library=bogus)
    with pytest.raises(EngineNotFoundError, match="apt-get install espeak-ng"):
        get_backend("espeak", library=bogus)
    (tmp_path / "not-a-library.so").write_text("not a shared library")
    with pytest.raises(EngineNotFoundError, match="apt-get install espeak-ng"):
        EspeakNGBackend(library=str(tmp_path / "not-a-library.so")).voices()
    with pytest.raises(EngineNotFoundError, match="apt-get install flite"):
        FliteBackend(library_dir=str(tmp_path))
    with pytest.raises(ValueError, match="espeak-ng, flite"):
        get_backend("no-such-engine")


def test_missing_kokoro_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "kokoro", None)  # import machinery reads None as "not installed"
    with pytest.raises(EngineNotFoundError, match="pip install kokoro"):
        get_backend("kokoro")


# --- the shared machinery ---------------------------------------------------------------------------------


class RecordedBackend(TTSBackend):
    """Returns the engine output it was built with, to test what `synthesize` does with it."""

    name = "recorded"
    default_voice = "default"
    version = "1"

    def __init__(self, audio: np.ndarray, sampling_rate: int):
        self.output = _EngineOutput(audio, sampling_rate)

    def voices(self) -> list[str]:
        return [self.default_voice]

    def _synthesize(self, text, voice, rate, pitch) -> _EngineOutput:
        return self.output


def test_synthesis_is_float32_at_16k_within_one():
    scaled = RecordedBackend(np.full(8000, 16384, np.int16), 8000).synthesize("int16 PCM").audio
    assert (
        scaled.dtype == np.float32
        and scaled.size == 16000
        and np.allclose(scaled[4000:-4000], 0.5, atol=0.01)
    )
    for sampling_rate in (22050, 16000):  # resampled, and left at its rate: clipped and float32 either way
        loud = np.sin(np.linspace(0, 200, sampling_rate)) * 1.5
        audio = RecordedBackend(loud, sampling_rate).synthesize("too loud").audio
        assert audio.dtype == np.float32 and audio.size == 16000 and np.abs(audio).max() <= 1.0


def test_align_and_consistent_times():
    assert _align(list("abcd"), list("abcd")) == [0, 1, 2, 3]
    assert _align(list("abcd"), list("axcd")) == [0, 1, 2, 3]  # substitution
    assert _align(list("abcd"), list("acd")) == [0, 2, 3]  # a sound dropped in context
    assert _align(list("ab"), list("aXb")) == [0, None, 1]  # a sound added in context
    assert _align([], ["a"]) == [None] and _align(["a"], []) == []
    assert _align(["ə", "ðə"], ["ðə"]) == [1]  # symbols are whole strings, not characters
    starts, ends = _consistent_times([0.0, None, 0.5, 0.4], [0.3, None, 0.7, 2.0], duration=1.0)
    assert starts == [0.0, 0.3, 0.5, 0.5] and ends == [0.3, 0.3, 0.7, 1.0]


def test_choose_job_is_deterministic_per_text():
    voices = ["a", "b", "c", "d"]
    jobs = [choose_job(f"text {i}", voices, 7, (0.8, 1.2), (0.9, 1.1)) for i in range(20)]
    assert jobs == [choose_job(f"text {i}", voices, 7, (0.8, 1.2), (0.9, 1.1)) for i in range(20)]
    assert len({job.voice for job in jobs}) > 1 and all(0.8 <= job.rate <= 1.2 for job in jobs)
    assert jobs != [choose_job(f"text {i}", voices, 8, (0.8, 1.2), (0.9, 1.1)) for i in range(20)]
    assert choose_job("same", voices, 7, None, None).rate is None


def test_synthesize_many_caches_and_resumes(tmp_path):
    texts = [f"sentence number {i}" for i in range(6)]
    backend = ToneBackend()
    ToneBackend.calls = 0
    # A run killed after the first half: those are cached, plus a wav whose sidecar was never written.
    synthesize_many(texts[:3], backend, num_workers=0, cache_dir=tmp_path, seed=1, progress=False)
    assert ToneBackend.calls == 3
    job = choose_job(texts[3], backend.voices(), 1, (0.85, 1.15), (0.9, 1.1))
    orphan = tmp_path / cache_key(backend, job)[:2] / f"{cache_key(backend, job)}.wav"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"truncated")
    ToneBackend.calls = 0
    first = synthesize_many(texts, backend, num_workers=0, cache_dir=tmp_path, seed=1, progress=False)
    assert ToneBackend.calls == 3  # only the three never completed
    ToneBackend.calls = 0
    again = synthesize_many(texts, backend, num_workers=0, cache_dir=tmp_path, seed=1, progress=False)
    assert ToneBackend.calls == 0  # all cache hits
    assert [result.text for result in first] == texts
    for fresh, cached in zip(first, again):  # bitwise: the cache restores what it stored
        assert np.array_equal(fresh.audio, cached.audio) and fresh.metadata() == cached.metadata()
        check_synthesis(cached, cached.text)
        sidecar = json.loads(Path(cached.audio_path).with_suffix(".json").read_text())
        assert sidecar["word_starts"] == cached.word_starts and sidecar["voice"] == cached.voice


def test_synthesize_many_without_cache_dedupes_nothing_and_keeps_order():
    texts = ["one two", "three", "one two"]
    results = synthesize_many(texts, ToneBackend(), num_workers=0, seed=0, rate_range=None, progress=False)
    assert [result.text for result in results] == texts and results[0].rate is None
    assert results[0].voice == results[2].voice  # the choice depends on the text, not its position


@pytest.mark.assets
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs `apt-get install espeak-ng`")
def test_synthesize_many_in_worker_processes(tmp_path):
    texts = [f"Item {i} is spoken by a worker process." for i in range(8)]
    first = synthesize_many(texts, "espeak-ng", num_workers=2, cache_dir=tmp_path, seed=3, progress=False)
    assert [result.text for result in first] == texts
    assert len({result.voice for result in first}) > 1
    mtimes = {result.audio_path: os.stat(result.audio_path).st_mtime_ns for result in first}
    again = synthesize_many(texts, "espeak-ng", num_workers=2, cache_dir=tmp_path, seed=3, progress=False)
    assert {result.audio_path: os.stat(result.audio_path).st_mtime_ns for result in again} == mtimes
    for fresh, cached in zip(first, again):  # bitwise: the cache restores what it stored
        assert np.array_equal(fresh.audio, cached.audio) and fresh.metadata() == cached.metadata()
        check_synthesis(cached, cached.text)
    # Without a cache, in this process, the same seed makes the same choices (espeak-ng's audio itself may
    # differ by a few samples: its pitch flutter carries over between calls in a process).
    uncached = synthesize_many(texts, "espeak-ng", num_workers=0, seed=3, progress=False)
    choices = [(result.voice, result.rate, result.pitch) for result in uncached]
    assert choices == [(result.voice, result.rate, result.pitch) for result in first]
    assert all(abs(u.duration - f.duration) < 0.05 * f.duration for u, f in zip(uncached, first))


@pytest.mark.assets
@pytest.mark.skipif(shutil.which("flite") is None, reason="needs `apt-get install flite`")
def test_flite_is_reproducible():
    backend = FliteBackend()
    first = backend.synthesize(TEXT, voice="slt")
    backend.synthesize(TEXT, voice="awb", rate=1.2, pitch=1.1)
    # bitwise: one engine, repeated
    assert np.array_equal(first.audio, backend.synthesize(TEXT, voice="slt").audio)


# --- online backends, offline --------------------------------------------------------------------------------


def test_transformers_backend_on_a_tiny_vits(tmp_path):
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    vocab = {character: index for index, character in enumerate(" abcdefghijklmnopqrstuvwxyz'.,?!")}
    (tmp_path / "vocab.json").write_text(json.dumps({**vocab, "<unk>": len(vocab)}))
    VitsTokenizer(str(tmp_path / "vocab.json"), phonemize=False).save_pretrained(tmp_path)
    config = VitsConfig(
        vocab_size=len(vocab) + 1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=16,
        spectrogram_bins=17,
        upsample_initial_channel=16,
        upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        sampling_rate=22050,
        num_speakers=2,
        speaker_embedding_size=8,
    )
    VitsModel(config).save_pretrained(tmp_path)
    backend = get_backend("transformers", model=str(tmp_path))
    assert backend.voices() == ["0", "1"] and backend.supports_rate and not backend.supports_pitch
    synthesis = backend.synthesize("hello there", voice="1")
    assert (
        synthesis.sampling_rate == 16000 and synthesis.audio.dtype == np.float32 and synthesis.audio.size > 0
    )
    assert synthesis.word_starts is None and synthesis.words == ["hello", "there"]
    # bitwise: one engine, repeated
    assert np.array_equal(synthesis.audio, backend.synthesize("hello there", voice="1").audio)
    assert backend.synthesize("hello there", voice="1", rate=0.5).duration > synthesis.duration
    with pytest.raises(ValueError, match="pitch"):
        backend.synthesize("hello there", pitch=1.2)


@dataclass
class FakeToken:
    text: str
    whitespace: str
    start_ts: float | None
    end_ts: float | None

    def at_speed(self, speed: float) -> FakeToken:
        times = (None if ts is None else ts / speed for ts in (self.start_ts, self.end_ts))
        return FakeToken(self.text, self.whitespace, *times)


def test_kokoro_backend_with_a_stand_in_module(monkeypatch):
    """Kokoro's results come in chunks with per-token times; words gather their tokens across chunks."""

    class FakePipeline:
        def __init__(self, lang_code, repo_id, model):
            self.lang_code = lang_code

        def __call__(self, text, voice, speed, split_pattern):
            chunk = np.zeros(int(24000 / speed), np.float32)
            first = [
                FakeToken("Hello", "", 0.1, 0.4),
                FakeToken(",", " ", None, None),
                FakeToken("big", " ", 0.5, 0.9),
            ]
            second = [FakeToken("world", "", 0.0, 0.6), FakeToken("!", "", None, None)]
            for tokens in (first, second):
                yield types.SimpleNamespace(audio=chunk, tokens=[token.at_speed(speed) for token in tokens])

    fake = types.ModuleType("kokoro")
    fake.__spec__ = importlib.machinery.ModuleSpec("kokoro", None)
    fake.KPipeline = FakePipeline
    fake.KModel = lambda repo_id: types.SimpleNamespace(
        to=lambda device: types.SimpleNamespace(eval=lambda: "model")
    )
    monkeypatch.setitem(sys.modules, "kokoro", fake)
    backend = KokoroBackend(repo_id="fake/kokoro")
    synthesis = backend.synthesize("Hello, big world!", voice="bf_emma")
    check_synthesis(synthesis, "Hello, big world!")
    assert synthesis.duration == pytest.approx(2.0)
    assert synthesis.word_starts == [0.1, 0.5, 1.0] and synthesis.word_ends == [0.4, 0.9, 1.6]
    assert backend.synthesize("Hello, big world!", voice="bf_emma", rate=2.0).duration == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pitch"):
        backend.synthesize("Hello", pitch=1.1)
    _kokoro_pipeline.cache_clear()  # the stand-in must not outlive this test
    _kokoro_model.cache_clear()
