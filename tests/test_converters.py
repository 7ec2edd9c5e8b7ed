"""Round trips through the checkpoint converters on tiny fabricated models, plus checks on the real assets.

The CTranslate2 files are written by a small writer in this module (the layout ctranslate2's converter uses:
fused QKV, aliased output projection, per-row int8 scales); when ctranslate2 itself is installed, its own
converter and encoder give an independent reference.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OTHER_INSTANCE_ULPS, OTHER_PATH_ULPS, assert_close_in_dtype, tiny_text_config
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from hub_scripts.convert import main
from trainers.assets import models
from trainers.assets.asterisk import asterisk_prompts
from trainers.assets.ctranslate2_whisper import (
    WhisperSpecialTokens,
    convert_ctranslate2_whisper,
    dequantize_ctranslate2_variables,
    read_ctranslate2_model,
    restore_missing_merges,
    whisper_generation_config,
)
from trainers.assets.gguf_causal_lm import convert_gguf_causal_lm, load_gguf_causal_lm

CONTROL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
TIMESTAMP_TOKENS = [f"<|{i * 0.02:.2f}|>" for i in range(4)]
CT2_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


# --- a CTranslate2 writer for fabricated models ---------------------------------------------------------------


def byte_level_alphabet() -> list[str]:
    """The 256 characters that byte-level BPE maps bytes to, sorted: a complete tiny vocabulary."""
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def write_tokenizer_json(path: Path) -> list[str]:
    """A byte-level BPE tokenizer with Whisper's control tokens; returns the model vocabulary (with timestamps)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = byte_level_alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in CONTROL_TOKENS]
    )
    tokenizer.save(str(path))
    return alphabet + CONTROL_TOKENS + TIMESTAMP_TOKENS


def tiny_whisper(vocabulary: list[str]) -> WhisperForConditionalGeneration:
    """Random Whisper with unequal encoder/decoder sizes, so config inference is really tested."""
    torch.manual_seed(0)
    end_of_text = vocabulary.index("<|endoftext|>")
    config = WhisperConfig(
        vocab_size=len(vocabulary),
        num_mel_bins=8,
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=32,
        decoder_ffn_dim=24,
        max_source_positions=6,
        max_target_positions=10,
        decoder_start_token_id=vocabulary.index("<|startoftranscript|>"),
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model


def whisper_to_ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """Name, fuse and annotate Whisper weights the way ctranslate2's Whisper converter does."""
    state = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    config = model.config
    variables = {
        "encoder/num_heads": np.int16(config.encoder_attention_heads),
        "decoder/num_heads": np.int16(config.decoder_attention_heads),
        "decoder/activation": np.int8(3),
        "decoder/pre_norm": np.int8(1),
        "decoder/scale_embeddings": np.int8(0),
        "decoder/alibi": np.int8(0),
        "decoder/alignment_layer": np.int16(-1),
        "decoder/alignment_heads": np.int16(1),
    }

    def linear(source: str, target: str) -> None:
        variables[f"{target}/weight"] = state[f"{source}.weight"]
        variables[f"{target}/bias"] = state[f"{source}.bias"]

    def norm(source: str, target: str) -> None:
        variables[f"{target}/gamma"] = state[f"{source}.weight"]
        variables[f"{target}/beta"] = state[f"{source}.bias"]

    def fused(source: str, target: str, projections: list[str]) -> None:
        variables[f"{target}/weight"] = np.concatenate([state[f"{source}.{p}.weight"] for p in projections])
        biases = [state.get(f"{source}.{p}.bias", np.zeros(config.d_model, np.float32)) for p in projections]
        variables[f"{target}/bias"] = np.concatenate(biases)

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    for stack in ("encoder", "decoder"):
        variables[f"{stack}/position_encodings/encodings"] = state[f"model.{stack}.embed_positions.weight"]
        norm(f"model.{stack}.layer_norm", f"{stack}/layer_norm")
        for i in range(getattr(config, f"{stack}_layers")):
            source, target = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            norm(f"{source}.self_attn_layer_norm", f"{target}/self_attention/layer_norm")
            fused(f"{source}.self_attn", f"{target}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{source}.self_attn.out_proj", f"{target}/self_attention/linear_1")
            if stack == "decoder":
                norm(f"{source}.encoder_attn_layer_norm", f"{target}/attention/layer_norm")
                linear(f"{source}.encoder_attn.q_proj", f"{target}/attention/linear_0")
                fused(f"{source}.encoder_attn", f"{target}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{source}.encoder_attn.out_proj", f"{target}/attention/linear_2")
            norm(f"{source}.final_layer_norm", f"{target}/ffn/layer_norm")
            linear(f"{source}.fc1", f"{target}/ffn/linear_0")
            linear(f"{source}.fc2", f"{target}/ffn/linear_1")
    variables["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    return variables


def is_quantizable(name: str, value: np.ndarray) -> bool:
    """ctranslate2 quantizes linear, convolution and embedding weights, never position encodings or norms."""
    return (
        value.ndim >= 2 and (name.endswith("/weight") or name.endswith(".weight")) and "positions" not in name
    )


def int8_rows(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = value.reshape(value.shape[0], -1)
    scale = (127.0 / np.abs(rows).max(axis=1)).astype(np.float32)
    return np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape), scale


def stored(name: str, value: np.ndarray, quantization: str) -> list[tuple[str, str, np.ndarray]]:
    """(name, ctranslate2 type, data) entries for one float32 variable under a quantization mode."""
    if value.dtype != np.float32:
        return [(name, value.dtype.name, value)]
    if quantization == "int8" and is_quantizable(name, value):
        weight, scale = int8_rows(value)
        return [(name, "int8", weight), (f"{name}_scale", "float32", scale)]
    if quantization == "float16":
        return [(name, "float16", value.astype(np.float16))]
    if quantization == "bfloat16":
        bits = torch.from_numpy(value).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return [(name, "bfloat16", bits)]
    return [(name, "float32", value)]


def expected_value(name: str, value: torch.Tensor, quantization: str) -> torch.Tensor:
    """What a converted weight must equal: the stored value read back in float32."""
    array = value.detach().numpy()
    if quantization == "int8" and is_quantizable(name, array):
        weight, scale = int8_rows(array)
        return torch.from_numpy((weight.reshape(len(scale), -1) / scale[:, None]).reshape(array.shape))
    if quantization in ("float16", "bfloat16"):
        return value.to(getattr(torch, quantization)).float()
    return value


def write_string(handle, text: str) -> None:
    data = text.encode("utf-8") + b"\0"
    handle.write(struct.pack("<H", len(data)) + data)


def write_ct2_model_bin(
    path: Path,
    entries: list[tuple[str, str, np.ndarray]],
    aliases: dict[str, str],
    spec: str = "WhisperSpec",
    binary_version: int = 6,
) -> None:
    """ctranslate2's binary layout; versions < 4 record an item size and element count instead of a type id."""
    with path.open("wb") as handle:
        handle.write(struct.pack("<I", binary_version))
        if binary_version >= 2:
            write_string(handle, spec)
            handle.write(struct.pack("<I", 3))
        handle.write(struct.pack("<I", len(entries)))
        for name, type_name, value in sorted(entries, key=lambda entry: entry[0]):
            value = np.asarray(value)  # keeps rank 0 for scalars, unlike np.ascontiguousarray
            write_string(handle, name)
            handle.write(struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape))
            if binary_version >= 4:
                handle.write(struct.pack("<BI", CT2_TYPE_IDS[type_name], value.nbytes))
            else:
                handle.write(struct.pack("<BI", value.itemsize, value.size))
            handle.write(value.tobytes())
        if binary_version >= 3:
            handle.write(struct.pack("<I", len(aliases)))
            for alias, target in aliases.items():
                write_string(handle, alias)
                write_string(handle, target)


def write_faster_whisper_dir(
    directory: Path, quantization: str = "float32", binary_version: int = 6
) -> tuple[WhisperForConditionalGeneration, list[str]]:
    """A complete faster-whisper style directory for a tiny random Whisper; returns the model and vocabulary."""
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = write_tokenizer_json(directory / "tokenizer.json")
    (directory / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    ct2_config = {"suppress_ids": [1, 2], "suppress_ids_begin": [32, 256], "alignment_heads": [[0, 1]]}
    (directory / "config.json").write_text(json.dumps(ct2_config), encoding="utf-8")
    model = tiny_whisper(vocabulary)
    entries = []
    for name, value in whisper_to_ct2_variables(model).items():
        entries += stored(name, np.asarray(value), quantization)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"} if binary_version >= 3 else {}
    write_ct2_model_bin(directory / "model.bin", entries, aliases, binary_version=binary_version)
    return model, vocabulary


def whisper_outputs(model: WhisperForConditionalGeneration) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    frames = 2 * model.config.max_source_positions
    features = torch.randn(2, model.config.num_mel_bins, frames, generator=generator)
    decoder_ids = torch.randint(0, model.config.vocab_size, (2, 5), generator=generator)
    with torch.no_grad():
        output = model(input_features=features, decoder_input_ids=decoder_ids)
    return output.encoder_last_hidden_state, output.logits


# --- CTranslate2 Whisper: fabricated round trips ----------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["float32", "float16", "bfloat16", "int8"])
def test_whisper_round_trip_is_exact(tmp_path, quantization):
    source, vocabulary = write_faster_whisper_dir(tmp_path / "ct2", quantization)
    output = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(output).eval()

    reference = tiny_whisper(vocabulary)
    with torch.no_grad():
        for name, value in reference.state_dict().items():
            value.copy_(expected_value(name, source.state_dict()[name], quantization))
    converted_state = converted.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(converted_state[name], value), name  # bitwise: the stored weights
    for got, want in zip(whisper_outputs(converted), whisper_outputs(reference)):
        assert_close_in_dtype(got, want, ulps=OTHER_INSTANCE_ULPS)
    if quantization == "float32":
        for got, want in zip(whisper_outputs(converted), whisper_outputs(source)):
            assert_close_in_dtype(got, want, ulps=OTHER_INSTANCE_ULPS)


def test_whisper_config_tokenizer_and_generation_config(tmp_path):
    source, vocabulary = write_faster_whisper_dir(tmp_path / "ct2")
    output = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    config = WhisperConfig.from_pretrained(output)
    inferred = [
        "vocab_size",
        "d_model",
        "num_mel_bins",
        "encoder_layers",
        "decoder_layers",
        "encoder_ffn_dim",
    ]
    inferred += [
        "decoder_ffn_dim",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "max_source_positions",
    ]
    for field in inferred + ["max_target_positions"]:
        assert getattr(config, field) == getattr(source.config, field), field
    assert config.decoder_start_token_id == vocabulary.index("<|startoftranscript|>")
    assert config.tie_word_embeddings

    generation = WhisperForConditionalGeneration.from_pretrained(output).generation_config
    assert generation.is_multilingual is False
    assert generation.no_timestamps_token_id == vocabulary.index("<|notimestamps|>")
    assert generation.suppress_tokens == [1, 2] and generation.begin_suppress_tokens == [32, 256]
    assert generation.alignment_heads == [[0, 1]]

    assert WhisperFeatureExtractor.from_pretrained(output).feature_size == 8
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == vocabulary[: len(tokenizer)]
    assert tokenizer.all_special_ids[-1] == vocabulary.index("<|notimestamps|>")
    text = "hello, world"
    ids = tokenizer(text).input_ids
    assert ids[:2] == [vocabulary.index("<|startoftranscript|>"), vocabulary.index("<|notimestamps|>")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_multilingual_generation_config_defaults_to_transcribe():
    vocabulary = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|de|>",
        "<|translate|>",
        "<|transcribe|>",
    ]
    vocabulary += ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    special = WhisperSpecialTokens.from_vocabulary(vocabulary)
    config = WhisperConfig(vocab_size=51865, begin_suppress_tokens=[220, 0])
    generation = whisper_generation_config(config, special, {})
    assert generation.is_multilingual and generation.task == "transcribe"
    assert generation.lang_to_id == {"<|en|>": 2, "<|de|>": 3}
    assert generation.task_to_id == {"transcribe": 5, "translate": 4}


def test_old_binary_version_without_aliases_reads(tmp_path):
    source, _ = write_faster_whisper_dir(tmp_path / "ct2", binary_version=2)
    checkpoint = read_ctranslate2_model(tmp_path / "ct2" / "model.bin")
    assert checkpoint.binary_version == 2 and "decoder/projection/weight" not in checkpoint.variables
    converted = WhisperForConditionalGeneration.from_pretrained(
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    )
    for got, want in zip(whisper_outputs(converted.eval()), whisper_outputs(source)):
        assert_close_in_dtype(got, want, ulps=OTHER_INSTANCE_ULPS)


def test_cli_converts(tmp_path, capsys):
    write_faster_whisper_dir(tmp_path / "ct2")
    main(
        [
            "--format",
            "ctranslate2-whisper",
            "--source",
            str(tmp_path / "ct2"),
            "--output_dir",
            str(tmp_path / "hf"),
        ]
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_tokenizer_disagreeing_with_vocabulary_is_not_saved(tmp_path, caplog):
    _, vocabulary = write_faster_whisper_dir(tmp_path / "ct2")
    vocabulary[3], vocabulary[4] = vocabulary[4], vocabulary[3]
    (tmp_path / "ct2" / "vocabulary.txt").write_text("\n".join(vocabulary), encoding="utf-8")
    output = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    assert not (output / "tokenizer.json").exists()
    assert (output / "preprocessor_config.json").is_file()
    assert "disagrees with the model vocabulary at id 3" in caplog.text


def test_a_lost_space_merge_is_restored_first_and_the_word_is_one_token_again():
    """Whisper base's shipped tokenizer.json lacks the merge `Ġ t`, so " the" encoded as `Ġ` + `the`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {char: i for i, char in enumerate(byte_level_alphabet())}
    for token in ("Ġt", "he", "Ġthe"):
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e"), ("Ġt", "he")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    whole = json.loads(tokenizer.to_str())
    broken = json.loads(tokenizer.to_str())
    broken["model"]["merges"] = broken["model"]["merges"][1:]
    assert Tokenizer.from_str(json.dumps(broken)).encode(" the").tokens == ["Ġ", "t", "he"]

    assert restore_missing_merges(broken) == ["Ġt"]
    assert broken["model"]["merges"] == whole["model"]["merges"]
    assert Tokenizer.from_str(json.dumps(broken)).encode(" the").tokens == ["Ġthe"]
    assert restore_missing_merges(whole) == []  # a complete file is left as it is


@pytest.mark.assets
@pytest.mark.slow
def test_real_whisper_base_tokenizer_encodes_like_openais():
    converted_dir = asset(models.whisper_base_path)
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    assert tokenizer.convert_ids_to_tokens(tokenizer(" the cat", add_special_tokens=False).input_ids) == [
        "Ġthe",
        "Ġcat",
    ]


def test_int16_and_scalar_metadata_dequantize():
    weight = np.array([[100, -200], [50, 25]], dtype=np.int16)
    variables = {"w": weight, "w_scale": np.float32(4.0), "decoder/pre_norm": np.int8(1)}
    weights = dequantize_ctranslate2_variables(variables)
    # bitwise: dividing by a power of two is exact, and the stored weight is the contract
    np.testing.assert_array_equal(weights["w"], weight.astype(np.float32) / 4.0)
    assert weights["decoder/pre_norm"] == 1 and "w_scale" not in weights


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(edit(path.read_bytes()))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: struct.pack("<I", 99) + data[4:], "unsupported CTranslate2 binary version 99"),
        (lambda data: data[:-100], "truncated CTranslate2 file"),
        (lambda data: data + b"\0", "unexpected trailing bytes"),
    ],
)
def test_malformed_model_bin_raises(tmp_path, edit, message):
    write_faster_whisper_dir(tmp_path / "ct2")
    _rewrite(tmp_path / "ct2" / "model.bin", edit)
    with pytest.raises(ValueError, match=message):
        read_ctranslate2_model(tmp_path / "ct2" / "model.bin")


def test_unknown_type_id_raises(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2_model_bin(path, [("x", "float32", np.zeros(2, np.float32))], {})
    _rewrite(path, lambda data: data.replace(struct.pack("<BI", 0, 8), struct.pack("<BI", 9, 8)))
    with pytest.raises(ValueError, match="unknown CTranslate2 type id 9"):
        read_ctranslate2_model(path)


def test_non_whisper_and_unknown_layouts_raise(tmp_path):
    _, _ = write_faster_whisper_dir(tmp_path / "ct2")
    checkpoint = read_ctranslate2_model(tmp_path / "ct2" / "model.bin")
    entries = [
        (name, "float32" if v.dtype == np.float32 else v.dtype.name, v)
        for name, v in checkpoint.variables.items()
    ]
    entries = [entry for entry in entries if entry[0] != "decoder/projection/weight"]
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}

    write_ct2_model_bin(tmp_path / "ct2" / "model.bin", entries, aliases, spec="TransformerSpec")
    with pytest.raises(ValueError, match="holds a TransformerSpec model, not WhisperSpec"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    extra = [
        ("encoder/layer_0/self_attention/relative_position_keys", "float32", np.zeros((3, 2), np.float32))
    ]
    write_ct2_model_bin(tmp_path / "ct2" / "model.bin", entries + extra, aliases)
    with pytest.raises(ValueError, match="unknown CTranslate2 Whisper variables.*relative_position_keys"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    relu = [
        entry if entry[0] != "decoder/activation" else (entry[0], "int8", np.int8(0)) for entry in entries
    ]
    write_ct2_model_bin(tmp_path / "ct2" / "model.bin", relu, aliases)
    with pytest.raises(ValueError, match="unsupported Whisper variant: decoder/activation = 0, expected 3"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    zero_point = [("decoder/layer_0/ffn/linear_0/weight_zero", "float32", np.zeros(2, np.float32))]
    write_ct2_model_bin(tmp_path / "ct2" / "model.bin", entries + zero_point, aliases)
    with pytest.raises(ValueError, match="AWQ zero-point"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")


def test_missing_model_bin_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin not found"):
        convert_ctranslate2_whisper(tmp_path, tmp_path / "hf")


# --- CTranslate2 Whisper: ctranslate2's own converter and runtime as reference ------------------------------------


@pytest.mark.parametrize("quantization", ["float32", "int8_float32"])
def test_whisper_matches_ctranslate2_runtime(tmp_path, quantization):
    ctranslate2 = pytest.importorskip(
        "ctranslate2", reason="pip install ctranslate2 for the independent check"
    )
    vocabulary = write_tokenizer_json(tmp_path / "tokenizer.json")
    model = tiny_whisper(vocabulary)
    from transformers import WhisperTokenizerFast

    WhisperTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")).save_pretrained(
        tmp_path / "hf_source"
    )
    model.save_pretrained(tmp_path / "hf_source")
    ctranslate2.converters.TransformersConverter(str(tmp_path / "hf_source")).convert(
        str(tmp_path / "ct2"), quantization=quantization
    )
    converted = WhisperForConditionalGeneration.from_pretrained(
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    ).eval()
    if quantization == "float32":
        for name, value in model.state_dict().items():
            assert torch.equal(converted.state_dict()[name], value), name  # bitwise: the stored weights

    features = torch.randn(2, 8, 12, generator=torch.Generator().manual_seed(2))
    runtime = ctranslate2.models.Whisper(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    reference = np.array(runtime.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = converted.model.encoder(features).last_hidden_state.numpy()
    assert_close_in_dtype(ours, reference, ulps=OTHER_PATH_ULPS)  # CTranslate2's own kernels


# --- GGUF causal LM --------------------------------------------------------------------------------------------


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The rotary row order llama.cpp stores q/k projections in (transformers undoes it when loading)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    vocab_size = len(byte_level_alphabet()) + 2
    config = LlamaConfig(
        **{
            **tiny_text_config(vocab_size),
            "max_position_embeddings": 64,
            "tie_word_embeddings": False,
            "bos_token_id": vocab_size - 1,
            "eos_token_id": vocab_size - 1,
        }
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def write_llama_gguf(model: LlamaForCausalLM, path: Path, tensor_type: str) -> None:
    """A llama.cpp-style GGUF of `model` with a byte-level GPT-2 tokenizer (one merge, one control token)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    tokens = byte_level_alphabet() + ["Ġt", "<|endoftext|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)

    state = {name: value.numpy() for name, value in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    names["lm_head.weight"] = "output.weight"
    parts = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
    }
    parts |= {"self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output"}
    parts |= {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        for hf, ggml in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{ggml}.weight"
    for hf_name, gguf_name in names.items():
        value = state[hf_name]
        if gguf_name.endswith("attn_q.weight"):
            value = llama_cpp_permute(value, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            value = llama_cpp_permute(value, config.num_key_value_heads)
        if tensor_type == "Q8_0" and value.ndim == 2:
            quantized = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                gguf_name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_logits(model) -> torch.Tensor:
    input_ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("tensor_type", ["F32", "Q8_0"])
def test_gguf_round_trip_gives_equal_logits(tmp_path, tensor_type):
    source = tiny_llama()
    gguf_path = tmp_path / "tiny.gguf"
    write_llama_gguf(source, gguf_path, tensor_type)
    output = convert_gguf_causal_lm(gguf_path, tmp_path / "hf")

    converted = AutoModelForCausalLM.from_pretrained(output).eval()
    assert getattr(converted.config, "quantization_config", None) is None
    assert converted.dtype == torch.float32
    assert_close_in_dtype(
        llama_logits(converted), llama_logits(load_gguf_causal_lm(gguf_path).eval()), ulps=OTHER_INSTANCE_ULPS
    )
    if tensor_type == "F32":
        assert_close_in_dtype(llama_logits(converted), llama_logits(source), ulps=OTHER_INSTANCE_ULPS)
    else:
        # Q8_0 keeps 8 bits a weight: the tolerance is the quantization's, not a dtype's
        torch.testing.assert_close(llama_logits(converted), llama_logits(source), atol=0.05, rtol=0.05)

    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.convert_ids_to_tokens(tokenizer(" t").input_ids) == ["Ġt"]
    assert converted.generation_config.eos_token_id == source.config.eos_token_id


def test_gguf_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        convert_gguf_causal_lm(tmp_path / "missing.gguf", tmp_path / "hf")


# --- the real assets -------------------------------------------------------------------------------------------


def asset(locate):
    """Call an asset locator, skipping the test with the install command when the asset is missing."""
    try:
        return locate()
    except (FileNotFoundError, ModuleNotFoundError) as missing:
        pytest.skip(str(missing))


def real_speech_features(model_dir: Path) -> np.ndarray:
    """Log-mel features of one real Asterisk prompt, or of a chirp when the Debian prompts are missing."""
    try:
        audio = asterisk_prompts(limit=1)[0].audio
    except (FileNotFoundError, ModuleNotFoundError):
        time = np.arange(16_000) / 16_000
        audio = (0.3 * np.sin(2 * np.pi * (200 + 400 * time) * time)).astype(np.float32)
    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    return extractor(audio, sampling_rate=16_000, return_tensors="np").input_features


@pytest.mark.assets
@pytest.mark.parametrize(
    "name",
    ["whisper_tiny_en", pytest.param("whisper_base", marks=pytest.mark.slow)],
)
def test_real_whisper_encoder_matches_ctranslate2(tmp_path, name):
    """The converted encoder reproduces ctranslate2's float32 encoder up to float32 rounding."""
    ctranslate2 = pytest.importorskip(
        "ctranslate2", reason="pip install ctranslate2 for the reference encoder"
    )
    converted_dir = asset(getattr(models, f"{name}_path"))
    if name == "whisper_base":
        source_dir = models.join_whisper_base(tmp_path / "source")
    else:
        source_dir = models.whisper_tiny_en_source()
    features = real_speech_features(converted_dir)
    runtime = ctranslate2.models.Whisper(str(source_dir), device="cpu", compute_type="float32")
    reference = np.array(runtime.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    model = WhisperForConditionalGeneration.from_pretrained(converted_dir).eval()
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert np.abs(ours - reference).max() <= 2e-4 * np.abs(reference).max()


@pytest.mark.assets
def test_real_smollm2_logits_equal_gguf():
    converted_dir = asset(models.smollm2_135m_instruct_path)
    converted = AutoModelForCausalLM.from_pretrained(converted_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    input_ids = input_ids if isinstance(input_ids, torch.Tensor) else input_ids["input_ids"]
    with torch.no_grad():
        ours = converted(input_ids).logits
        reference = load_gguf_causal_lm(models.smollm2_135m_instruct_gguf()).eval()(input_ids).logits
    assert_close_in_dtype(ours, reference, ulps=OTHER_INSTANCE_ULPS)
