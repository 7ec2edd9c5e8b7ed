"""Real human speech that ships offline: the Asterisk PBX's English prompts with their transcripts.

One US-English speaker, CC-BY-SA-3.0, from Debian (`asterisk-core-sounds-en-g722` for the G.722 clips,
`asterisk-core-sounds-en` for the transcripts): the held-out human speech of the embedded default's evaluation
and a small training set (`salad-prepare-data --output_dir data/asterisk`).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

G722_INSTALL = "pip install G722==1.2.8"
ASTERISK_SOUNDS_INSTALL = "apt-get install asterisk-core-sounds-en-g722"
ASTERISK_TRANSCRIPTS_INSTALL = "apt-get install asterisk-core-sounds-en"

ASTERISK_SOUND_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_SAMPLING_RATE = 16_000
_G722_BIT_RATE = 64_000
# Notes inside a transcript ("at [@]", "IAX (note: does not say "2")") describe rather than transcribe.
_ANNOTATION = re.compile(r"\s*(\[[^\]]*\]|\([^)]*\))")
# Whole-line descriptions ("[ascending tones]", "(1 second of silence)", "<beep ascending>") mark clips
# without speech.
_NON_SPEECH = re.compile(r"[\[(<].*[\])>]")


@dataclass(frozen=True, eq=False)
class SpeechClip:
    """One recorded prompt: mono float32 audio in [-1, 1) and what is said in it."""

    name: str
    audio: np.ndarray
    transcript: str
    sampling_rate: int = ASTERISK_SAMPLING_RATE


def _dpkg_listing(package: str) -> list[Path]:
    """Files that dpkg installed for `package`; empty when dpkg or the package is absent."""
    try:
        listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return []
    return [Path(line) for line in listing.stdout.splitlines() if line.startswith("/")]


def _asterisk_sound_dir() -> Path:
    if any(ASTERISK_SOUND_DIR.rglob("*.g722")):
        return ASTERISK_SOUND_DIR
    clips = [path for path in _dpkg_listing("asterisk-core-sounds-en-g722") if path.suffix == ".g722"]
    if not clips:
        raise FileNotFoundError(
            f"no G.722 Asterisk prompts found; install them with `{ASTERISK_SOUNDS_INSTALL}`"
        )
    return Path(os.path.commonpath(clips))


def _asterisk_transcript_file() -> Path:
    if ASTERISK_TRANSCRIPTS.is_file():
        return ASTERISK_TRANSCRIPTS
    for path in _dpkg_listing("asterisk-core-sounds-en"):
        if path.name == ASTERISK_TRANSCRIPTS.name:
            return path
    raise FileNotFoundError(
        f"{ASTERISK_TRANSCRIPTS.name} not found; install it with `{ASTERISK_TRANSCRIPTS_INSTALL}` "
        "(on images that exclude /usr/share/doc from dpkg, lift that exclusion first)"
    )


def read_asterisk_transcripts(path: Path) -> dict[str, str]:
    """Map prompt names (`digits/5`) to spoken text, leaving out clips that contain no speech."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    transcripts = {}
    for line in lines:
        if not line.strip() or line.startswith(";") or ":" not in line:
            continue
        name, text = (part.strip() for part in line.split(":", 1))
        if _NON_SPEECH.fullmatch(text):
            continue
        text = _ANNOTATION.sub("", text).strip()
        if text:
            transcripts[name] = text
    return transcripts


def decode_g722(path: Path) -> np.ndarray:
    """Decode a 64 kbit/s G.722 file into 16 kHz mono float32 samples in [-1, 1)."""
    try:
        from G722 import G722  # lazily: the optional `assets` extra
    except ImportError as error:
        raise ModuleNotFoundError(f"decoding G.722 needs the G722 package: `{G722_INSTALL}`") from error
    samples = G722(ASTERISK_SAMPLING_RATE, _G722_BIT_RATE).decode(path.read_bytes())
    return np.asarray(samples, dtype=np.int16).astype(np.float32) / 32768.0


def asterisk_prompts(limit: int | None = None) -> list[SpeechClip]:
    """Real human speech: the Asterisk English prompts (one US-English speaker, CC-BY-SA-3.0) with transcripts.

    Clips come from Debian `asterisk-core-sounds-en-g722`, transcripts from `asterisk-core-sounds-en`; clips of
    tones or silence are skipped. Sorted by name for reproducibility; `limit` keeps the first ones.
    """
    sound_dir = _asterisk_sound_dir()
    transcripts = read_asterisk_transcripts(_asterisk_transcript_file())
    clips = sorted(sound_dir.rglob("*.g722"))
    names = [clip.relative_to(sound_dir).with_suffix("").as_posix() for clip in clips]
    selected = [(name, clip) for name, clip in zip(names, clips) if name in transcripts][:limit]
    return [SpeechClip(name, decode_g722(clip), transcripts[name]) for name, clip in selected]
