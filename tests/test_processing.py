"""SaladProcessor: placeholder expansion, chunking, chat messages, and the documented input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny, make_tokenizer, tone
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

from modeling_salad import SaladProcessor


def test_placeholders_expand_per_clip_in_order(whisper_salad):
    _, processor = whisper_salad
    spec = processor.length_spec
    clips = [tone(0.5), tone(1.25), tone(0.1)]
    inputs = processor(text=["<|audio|> a", "b <|audio|> c <|audio|>"], audio=clips)
    counts = (inputs["input_ids"] == processor.audio_token_id).sum(-1).tolist()
    assert counts == [
        spec.num_tokens(clips[0].size),
        spec.num_tokens(clips[1].size) + spec.num_tokens(clips[2].size),
    ]
    assert inputs["input_features"].shape[0] == 3
    assert inputs["input_features_mask"].sum(-1).tolist() == [
        (c.size + spec.end_samples) // 160 for c in clips
    ]


def test_the_end_silence_never_opens_another_window(whisper_salad):
    """A clip gets its end silence only as far as its last window has room: exactly 30 s stays one Whisper
    window (as Whisper's extractor reads it), 60 s two, and 29.99 s gets the silence that fits."""
    spec = whisper_salad[1].length_spec
    window = spec.chunk_samples
    assert spec.chunk_lengths(window) == [window] and spec.chunk_lengths(2 * window) == [window, window]
    assert spec.chunk_lengths(window - 100) == [window] and spec.end_silence(window - 100) == 100
    assert spec.chunk_lengths(16000) == [16000 + spec.end_samples]


def test_long_audio_is_chunked_not_truncated(whisper_salad):
    _, processor = whisper_salad
    clip = tone(61.0)
    inputs = processor(audio=clip)
    spec = processor.length_spec
    assert spec.chunk_lengths(clip.size) == [30 * 16000, 30 * 16000, 16000 + spec.end_samples]
    assert inputs["input_features"].shape[0] == 3  # 30 s + 30 s + 1 s windows, then the clip's end silence
    assert int(inputs["input_features_mask"].sum()) == sum(n // 160 for n in spec.chunk_lengths(clip.size))
    assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == processor.length_spec.num_tokens(
        clip.size
    )


@pytest.mark.parametrize("family", ["mimi", "wav2vec2"])
def test_other_encoders_see_long_audio_in_30_second_windows(family):
    """Encoders other than Whisper attend over the whole window, so a long clip is cut into 30 s windows too
    (memory stays flat), and the model encodes it without truncating anything."""
    model, processor = build_tiny(family)
    rate = processor.sampling_rate
    clip = tone(61.0, sampling_rate=rate)
    inputs = processor(audio=clip, return_tensors="pt")
    assert inputs["input_features"].shape[0] == 3  # 30 s + 30 s + 1 s
    assert inputs["input_features"].shape[-1] == 30 * rate
    tokens = int((inputs["input_ids"] == processor.audio_token_id).sum())
    assert tokens == processor.length_spec.num_tokens(clip.size)
    if (
        family == "mimi"
    ):  # the tiny wav2vec2 barely downsamples: its 30 s windows would need 27 GB of attention
        with torch.no_grad():
            features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
        assert features.shape[0] == tokens


def test_integer_pcm_is_converted_to_float(whisper_salad):
    _, processor = whisper_salad
    pcm = (tone(0.5) * 32767).astype(np.int16)
    from_int = processor(audio=pcm)["input_features"]
    from_float = processor(audio=pcm.astype(np.float32) / 32768)["input_features"]
    torch.testing.assert_close(from_int, from_float)


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (tone(1.0), {"sampling_rate": 8000}, "expects 16000 Hz"),
        (np.zeros(0, np.float32), {}, "is empty"),
        (np.full(1000, np.nan, np.float32), {}, "NaN/inf"),
        (np.array([0.1, np.inf] * 500, np.float32), {}, "NaN/inf"),
        (np.zeros((2, 16000), np.float32), {}, "Down-mix"),
        ([tone(0.5), tone(0.5)], {"text": "only one <|audio|>"}, "2 audio clips"),
        ([tone(0.5)], {"text": "no placeholder"}, "0 <|audio|> placeholders"),
        (np.array(["a", "b"]), {}, "float or integer PCM"),
        (tone(0.5) * 32768, {}, "peaks at .*divide it by 32768"),  # int16 values stored as float
        (np.full(1000, 1e30, np.float32), {}, "peaks at"),  # finite, but would make the features non-finite
        (np.zeros(1000, np.uint32), {}, "ambiguous"),
    ],
)
def test_bad_audio_raises_actionable_value_error(whisper_salad, audio, kwargs, message):
    _, processor = whisper_salad
    with pytest.raises(ValueError, match=message):
        processor(audio=audio, **kwargs)


def test_integer_pcm_is_read_by_its_values():
    """Whatever the dtype: int16 samples in an int64 or int32 array are 16-bit PCM, 24-bit samples in int32 are
    24-bit PCM, uint8 / uint16 are offset binary, int8 is 8-bit."""
    from modeling_salad.processing_salad import pcm_to_float

    samples = (tone(0.1) * 30000).astype(np.int16)
    expected = samples.astype(np.float32) / 32768
    for dtype in (np.int16, np.int32, np.int64):
        np.testing.assert_allclose(pcm_to_float(samples.astype(dtype)), expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        pcm_to_float(samples.astype(np.int32) * 256), expected, rtol=0, atol=1e-7
    )  # 24-bit
    np.testing.assert_allclose(
        pcm_to_float((samples.astype(np.int32) + 32768).astype(np.uint16)), expected, atol=1e-7
    )
    np.testing.assert_allclose(pcm_to_float(np.array([0, 128, 255], np.uint8)), [-1.0, 0.0, 127 / 128])
    np.testing.assert_allclose(pcm_to_float(np.array([-128, 0, 64], np.int8)), [-1.0, 0.0, 0.5])


@pytest.mark.parametrize("rate", [0, -16000, 1_000_000_007, 16000.5, "fast"])
def test_sampling_rates_outside_the_documented_range_are_refused_before_resampling(rate):
    from modeling_salad import load_audio

    with pytest.raises(ValueError, match=r"sampling_rate .* \[1000, 384000\]|sampling_rate must be a number"):
        load_audio(tone(0.1), 16000, rate)


def test_tokenizer_without_audio_token_is_refused():
    fresh = PreTrainedTokenizerFast(tokenizer_object=_bpe_without_audio(), eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="has no '<|audio|>' token"):
        SaladProcessor(WhisperFeatureExtractor(), fresh, audio_length_spec={"feature_hop": 160})


def _bpe_without_audio():
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["some text"], vocab_size=260, special_tokens=["<|im_end|>"])
    return bpe


def test_processor_needs_length_spec():
    with pytest.raises(ValueError, match="audio_length_spec"):
        SaladProcessor(WhisperFeatureExtractor(), make_tokenizer())


def test_audio_token_is_special_and_not_eos(whisper_salad):
    _, processor = whisper_salad
    tokenizer = processor.tokenizer
    assert processor.audio_token in tokenizer.all_special_tokens
    assert processor.audio_token_id != tokenizer.eos_token_id
    assert tokenizer("x<|audio|><|audio|>y")["input_ids"].count(processor.audio_token_id) == 2


def test_chat_template_with_audio_parts(whisper_salad, tmp_path):
    import soundfile

    _, processor = whisper_salad
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.stack([tone(0.5, 8000), tone(0.5, 8000)], axis=1), 8000)  # stereo, 8 kHz
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": tone(0.5)},
                {"type": "text", "text": "and"},
                {"type": "audio", "path": str(path)},
            ],
        }
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\n<|audio|>\nand<|audio|><|im_end|>\n<|im_start|>assistant\n"
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["input_features"].shape[0] == 2
    assert int(
        (inputs["input_ids"] == processor.audio_token_id).sum()
    ) == 2 * processor.length_spec.num_tokens(8000)
