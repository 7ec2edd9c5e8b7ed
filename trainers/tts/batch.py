"""Speech for many texts: a voice and controls drawn per text, a cache on disk, and worker processes.

Stage II active selection, the TTS training rows and the spoken evaluation sets each synthesize thousands of
texts; `synthesize_many` makes them reproducible (the choices depend on the seed and the text alone) and
resumable (each result is cached under a hash of what determines it as soon as it is made).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm.auto import tqdm

from trainers.files import content_hash, write_atomic

from .backend import SAMPLING_RATE, Synthesis, TTSBackend, _stable_seed
from .registry import get_backend


@dataclass(frozen=True)
class SynthesisJob:
    """One text with the voice and controls chosen for it."""

    text: str
    voice: str
    rate: float | None
    pitch: float | None


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
    return content_hash(backend.name, backend.version, job.text, job.voice, job.rate, job.pitch, length=32)


def _cache_paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir) / key[:2]
    return folder / f"{key}.wav", folder / f"{key}.json"


def _quantize(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def save_cached(synthesis: Synthesis, cache_dir: str | Path, key: str) -> Synthesis:
    """Store `synthesis` as 16-bit WAV + JSON sidecar (written last: its presence marks a complete entry)
    and return it as it will read back, so fresh and cached results are identical."""
    wav_path, json_path = _cache_paths(cache_dir, key)
    samples = _quantize(synthesis.audio)
    write_atomic(wav_path, lambda path: soundfile.write(path, samples, SAMPLING_RATE, format="WAV"))
    synthesis.audio = samples.astype(np.float32) / 32767
    synthesis.audio_path = str(wav_path)
    write_atomic(json_path, lambda path: path.write_text(json.dumps(synthesis.metadata())))
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
