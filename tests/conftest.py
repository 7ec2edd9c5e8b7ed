"""Shared fixtures: tiny SALAD models built in code (no downloads), one per speech-encoder family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    EncodecFeatureExtractor,
    LlamaConfig,
    LlamaForCausalLM,
    MimiEncoderConfig,
    PreTrainedTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from modeling_salad import (
    SaladConfig,
    SaladForConditionalGeneration,
    SaladProcessor,
    TranscriptTokenizers,
    add_audio_token,
)
from trainers.tts.backend import TTSBackend, _EngineOutput

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "speech and text should be understood alike",
    "what is the capital of france? paris is the capital.",
    "one two three four five six seven eight nine ten",
] * 20


# Prepended to a script run in a fresh process: salad's own packages cannot be imported there, as on a machine that
# only has the model's remote code (a Hub download, a Space).
BLOCK_SALAD_IMPORTS = """
import importlib.abc, sys

class BlockSalad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling_salad", "trainers", "hub_scripts", "eval"}:
            raise ImportError(f"{name} is blocked: remote code must not need the salad package")

sys.meta_path.insert(0, BlockSalad())
"""


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained in code, with ChatML specials, a chat template and `<|audio|>`."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", bos_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    return add_audio_token(tokenizer)


def tiny_text_config(vocab_size: int) -> dict:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    ).to_dict()


def tiny_audio_config(family: str) -> dict:
    if family == "whisper":
        return WhisperConfig(
            d_model=16,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            num_mel_bins=80,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=32,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            decoder_start_token_id=0,
        ).to_dict()
    if family == "mimi":
        return MimiEncoderConfig(
            hidden_size=16,
            num_filters=4,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            codebook_dim=16,
            vector_quantization_hidden_dimension=16,
            head_dim=8,
        ).to_dict()
    if family == "wav2vec2":
        return Wav2Vec2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=(8, 8),
            conv_kernel=(10, 3),
            conv_stride=(5, 2),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            vocab_size=32,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        ).to_dict()
    raise ValueError(family)


def tiny_feature_extractor(family: str):
    if family == "whisper":
        return WhisperFeatureExtractor(feature_size=80)
    if family == "mimi":
        return EncodecFeatureExtractor(feature_size=1, sampling_rate=24000)
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True
    )


def build_tiny(family: str = "whisper", adapter_type: str = "mlp", seed: int = 0, **config_kwargs):
    """A random tiny SALAD model and its processor (eval mode, fp32)."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = SaladConfig(
        audio_config=config_kwargs.pop("audio_config", None) or tiny_audio_config(family),
        text_config=tiny_text_config(len(tokenizer)),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|audio|>"),
        adapter_type=adapter_type,
        adapter_stack_factor=1 if family == "mimi" else 2,
        adapter_hidden_size=32,
        adapter_intermediate_size=48,
        adapter_num_layers=2,
        adapter_num_attention_heads=4,
        adapter_num_key_value_heads=2,
        **config_kwargs,
    )
    model = SaladForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = SaladProcessor(
        tiny_feature_extractor(family), tokenizer, audio_length_spec=config.audio_length_spec.to_dict()
    )
    return model, processor


DECODER_END = 50  # the tiny Whisper's end of text: ids 0-49 are its text tokens
DECODER_PROMPT = [51, 52]
# The tiny Whisper's text tokens, byte-level as Whisper's (`Ġ` is a space): words of CORPUS and pieces of others.
DECODER_PIECES = [
    *(f"\u0120{word}" for word in (
        "the quick brown fox jumps over lazy dog speech and text should be understood alike what is capital of "
        "france paris one two three four five six seven eight nine ten"
    ).split()),
    "?", ".", ",", "\u01204", "2", "\u012042", "\u0120qu", "ick", "s", "ed", "ing", "\u0120", "'t", "\u0120don", "\u01201", "0",
    "\u0120a", "\u0120an", "\u0120i",
]  # fmt: skip


def make_speech_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny Whisper tokenizer: `DECODER_PIECES` as ids 0-49, then the end of text and the transcript prompt."""
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    vocab = {piece: i for i, piece in enumerate([*DECODER_PIECES, *specials])}
    assert vocab["<|endoftext|>"] == DECODER_END and [vocab[s] for s in specials[1:]] == DECODER_PROMPT
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tokenizer


def decoder_tiny(seed: int = 0, **config_kwargs):
    """A tiny Whisper + LM with a `"whisper_decoder"` adapter: its tokenizers (the tiny Whisper's, the LM's) and a
    residual that is not zero, so both paths of the adapter show in its output. Its decoder searches greedily unless
    `adapter_decoder_num_beams` says otherwise, so that a test can steer the transcript step by step (the beam
    search has tests of its own)."""
    config_kwargs.setdefault("adapter_decoder_num_beams", 1)
    audio_config = {
        **tiny_audio_config("whisper"),
        "eos_token_id": DECODER_END,
        "decoder_start_token_id": DECODER_PROMPT[0],
    }
    model, processor = build_tiny(
        "whisper",
        "whisper_decoder",
        seed=seed,
        audio_config=audio_config,
        adapter_decoder_prompt_ids=DECODER_PROMPT,
        **config_kwargs,
    )
    model.adapter.tokenizers = TranscriptTokenizers(speech=make_speech_tokenizer(), text=processor.tokenizer)
    with torch.no_grad():
        model.adapter.down_proj.weight.normal_(std=0.02)
    return model, processor


def backward_through_the_lm(model, processor) -> None:
    """One backward pass of the LM's next-token loss on a short prompt around a clip, in training mode."""
    model.train()
    inputs = processor(text="Hear <|audio|> now", audio=tone(1.0, 16000), sampling_rate=16000)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.audio_token_id, -100)
    model(**inputs, labels=labels).loss.backward()


# Float comparisons (README, "Testing"): a tolerance is a number of units of the compared dtype's epsilon, named
# for what differs between the two sides. Bitwise equality is asserted only where it is the contract (stored weights,
# restored checkpoints, integer tensors, one computation repeated in one process), with a comment saying which.
OTHER_INSTANCE_ULPS = 64
"""Two model instances with identical weights (a reloaded copy, a converted copy): the same arithmetic, but the
CPU's kernels may tile or vectorize it differently (weight alignment, AVX-512 or AMX dispatch on one CPU and not
another), so sums are reordered. Each reordered sum is off by a few units in the last place; a tiny model stacks a
handful of them, so 64 epsilons of the output's magnitude bounds it with room."""

OTHER_PATH_ULPS = 1024
"""Two code paths that compute the same function in another order (a masked layer loop against the reference
encoder, a chunked loss against the materialized one): whole reductions are regrouped, not only tiled."""


def float_tolerance(dtype: torch.dtype, ulps: float) -> dict[str, float]:
    """`rtol` and `atol` of `ulps` epsilons of `dtype`, for `torch.testing.assert_close` and `pytest.approx`."""
    epsilon = torch.finfo(dtype).eps
    return {"rtol": ulps * epsilon, "atol": ulps * epsilon}


def assert_close_in_dtype(actual, expected, *, ulps: float, msg: str | None = None) -> None:
    """`assert_close` with a tolerance of `ulps` epsilons of the compared tensors' dtype (numpy arrays too)."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    torch.testing.assert_close(actual, expected, **float_tolerance(actual.dtype, ulps), msg=msg)


def tone(seconds: float, sampling_rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A noisy sine: deterministic audio with some content for the encoder to see."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


class ToneBackend(TTSBackend):
    """A counting stand-in TTS engine: 0.1 s of tone per word (scaled by the rate) at 8 kHz, so synthesis
    resamples, with exact word timestamps; `calls` counts engine calls (cache hits do not call)."""

    name = "tone"
    default_voice = "low"
    calls = 0

    @property
    def version(self) -> str:
        return "1"

    def voices(self) -> list[str]:
        return ["low", "high"]

    def _synthesize(self, text, voice, rate, pitch) -> _EngineOutput:
        type(self).calls += 1
        word_seconds = 0.1 / (rate or 1.0)
        frequency = (200 if voice == "low" else 400) * (pitch or 1.0)
        n = int(word_seconds * 8000)
        audio = 0.5 * np.sin(2 * np.pi * frequency * np.arange(n * len(text.split())) / 8000)
        starts = [index * word_seconds for index in range(len(text.split()))]
        return _EngineOutput(audio, 8000, starts, [start + word_seconds for start in starts])


@pytest.fixture(scope="module")
def whisper_salad():
    return build_tiny("whisper")


@pytest.fixture(scope="module")
def component_checkpoints(tmp_path_factory):
    """A tiny Whisper and a tiny Llama with tokenizer, saved like Hub checkpoints."""
    root = tmp_path_factory.mktemp("components")
    torch.manual_seed(0)
    whisper_config = WhisperConfig(**tiny_audio_config("whisper"))
    WhisperModel(whisper_config).save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    tokenizer = make_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(**tiny_text_config(len(tokenizer) - 1)))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root
