"""SaladForConditionalGeneration: merging, batching, lengths, generation, gradients, assembly."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import OTHER_INSTANCE_ULPS, OTHER_PATH_ULPS, assert_close_in_dtype, build_tiny, tone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from transformers import (
    TextIteratorStreamer,
    WhisperFeatureExtractor,
    WhisperModel,
)

from modeling_salad import SaladConfig, SaladForConditionalGeneration, SaladProcessor

FAMILIES = ["whisper", "mimi", "wav2vec2"]


def audio_token_count(inputs, processor) -> int:
    return int((inputs["input_ids"] == processor.audio_token_id).sum())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("adapter_type", ["mlp", "transformer"])
def test_save_load_round_trip_gives_equal_outputs(tmp_path, family, adapter_type):
    model, processor = build_tiny(family, adapter_type)
    sr = processor.sampling_rate
    inputs = processor(text="Say <|audio|> again", audio=tone(0.7, sr), sampling_rate=sr)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = SaladForConditionalGeneration.from_pretrained(tmp_path).eval()
    reprocessor = SaladProcessor.from_pretrained(tmp_path)
    reinputs = reprocessor(text="Say <|audio|> again", audio=tone(0.7, sr), sampling_rate=sr)
    for key in inputs:
        torch.testing.assert_close(inputs[key], reinputs[key])
    with torch.no_grad():
        assert_close_in_dtype(model(**inputs).logits, reloaded(**reinputs).logits, ulps=OTHER_INSTANCE_ULPS)
    assert reloaded.config.to_dict()["adapter_type"] == adapter_type


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("adapter_type", ["mlp", "transformer"])
def test_batched_equals_one_by_one(family, padding_side, adapter_type):
    model, processor = build_tiny(family, adapter_type)
    sr = processor.sampling_rate
    texts = [
        "A short one: <|audio|>",
        "<|audio|> then a longer prompt with <|audio|> and more words after it",
    ]
    clips = [tone(0.6, sr, 300), tone(1.9, sr, 500, seed=1), tone(0.3, sr, 700, seed=2)]
    batch = processor(text=texts, audio=clips, sampling_rate=sr, padding_side=padding_side)
    singles = [
        processor(text=texts[0], audio=clips[:1], sampling_rate=sr),
        processor(text=texts[1], audio=clips[1:], sampling_rate=sr),
    ]
    with torch.no_grad():
        batch_logits = model(**batch).logits
        for row, single in enumerate(singles):
            single_logits = model(**single).logits[0]
            valid = batch["attention_mask"][row].bool()
            # Whisper and wav2vec2 mask padding; Mimi is causal and its windows are padded to whole frames
            assert_close_in_dtype(batch_logits[row][valid], single_logits, ulps=OTHER_PATH_ULPS)


def test_whisper_encodes_a_window_in_a_batch_as_alone_whatever_the_parity_of_its_frames():
    """Whisper's two convolutions read each window's own zero padding in a batch too: with a conv1 bias (real
    Whisper has one; a tiny model's starts at zero), a short window of an odd or even number of frames beside a
    longer one gets the encoder states it gets alone (the second convolution's stride 2 reads one frame past an odd
    window's end)."""
    model, processor = build_tiny("whisper", "mlp")
    with torch.no_grad():
        model.audio_tower.conv1.bias.normal_(std=1.0)
    parities = set()
    for seconds in (0.60, 0.61):
        clips = [tone(seconds, 16000), tone(1.9, 16000, 500, seed=1)]
        batch = processor(audio=clips, sampling_rate=16000)
        alone = processor(audio=clips[:1], sampling_rate=16000)
        parities.add(int(batch["input_features_mask"][0].sum()) % 2)
        with torch.no_grad():
            states = model.encode_windows(
                batch["input_features"], batch["input_features_mask"]
            ).encoder_states
            expected = model.encode_windows(
                alone["input_features"], alone["input_features_mask"]
            ).encoder_states
        assert_close_in_dtype(states[0, : expected.shape[1]], expected[0], ulps=OTHER_PATH_ULPS)
    assert parities == {0, 1}


def test_placeholders_match_embeddings_for_boundary_lengths(whisper_salad):
    model, processor = whisper_salad
    spec = model.config.audio_length_spec
    for n in [1, 159, 160, 399, 400, 401, 641, 16000, 480000, 480001, 960000]:
        inputs = processor(audio=tone(n / 16000 + 1e-9, 16000)[:n] if n > 1 else np.ones(1, np.float32))
        with torch.no_grad():
            embeds = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
        assert audio_token_count(inputs, processor) == embeds.shape[0] == spec.num_tokens(n), n


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_samples=st.integers(min_value=1, max_value=60 * 16000))
@example(num_samples=30 * 16000 + 1)
def test_processor_and_model_agree_on_audio_token_counts(whisper_salad, num_samples):
    """Property: for any clip length up to 60 s, placeholders == audio embeddings the model produces."""
    model, processor = whisper_salad
    clip = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    inputs = processor(audio=clip, sampling_rate=16000)
    with torch.no_grad():
        embeds = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    assert audio_token_count(inputs, processor) == embeds.shape[0]


@pytest.mark.parametrize("family", ["mimi", "wav2vec2"])
def test_waveform_encoders_agree_on_token_counts(family):
    model, processor = build_tiny(family)
    sr = processor.sampling_rate
    for seconds in [1 / sr, 0.01, 0.0801, 0.5, 1.33, 3.0]:
        clip = tone(seconds, sr) if int(seconds * sr) > 1 else np.ones(1, np.float32)
        inputs = processor(audio=clip, sampling_rate=sr)
        with torch.no_grad():
            embeds = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
        assert audio_token_count(inputs, processor) == embeds.shape[0]


def test_whisper_full_window_matches_reference_encoder():
    """On a full 30 s window our masked layer loop is exactly the transformers WhisperEncoder."""
    model, processor = build_tiny("whisper")
    features = WhisperFeatureExtractor(feature_size=80)(
        tone(4.0, 16000), sampling_rate=16000, return_tensors="pt"
    )
    reference = model.audio_tower(features["input_features"]).last_hidden_state
    ours = model._encode_whisper(features["input_features"], torch.tensor([3000]))
    assert_close_in_dtype(ours, reference, ulps=OTHER_PATH_ULPS)


def test_whisper_variable_length_close_to_padded_path():
    """Trimmed input differs from the 30 s padded one only by the attention mass on padding frames.

    With random tiny weights the cosine similarity over valid frames stays above 0.9; on real Whisper
    tiny.en see `test_assets.py` for the figure on real speech.
    """
    model, _ = build_tiny("whisper")
    clip = tone(3.0, 16000)
    fe = WhisperFeatureExtractor(feature_size=80)
    padded = fe(clip, sampling_rate=16000, return_tensors="pt")["input_features"]
    trimmed = fe(clip, sampling_rate=16000, padding="longest", return_tensors="pt")["input_features"]
    with torch.no_grad():
        full = model.audio_tower(padded).last_hidden_state
        short = model._encode_whisper(trimmed, torch.tensor([trimmed.shape[-1]]))
    cosine = torch.nn.functional.cosine_similarity(full[0, : short.shape[1]], short[0], dim=-1)
    assert cosine.mean() > 0.9


def test_generate_with_and_without_audio_uses_audio_at_prefill_only(whisper_salad):
    model, processor = whisper_salad
    calls = []
    handle = model.adapter.register_forward_hook(lambda *args: calls.append(1))
    try:
        with_audio = processor(text="Hear <|audio|>:", audio=tone(1.0))
        generated = model.generate(**with_audio, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert generated.shape[1] == with_audio["input_ids"].shape[1] + 6
        assert len(calls) == 1
        text_only = processor(text="No audio here")
        generated = model.generate(**text_only, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert generated.shape[1] == text_only["input_ids"].shape[1] + 4
        assert len(calls) == 1
    finally:
        handle.remove()


def test_generate_with_cache_equals_without_cache(whisper_salad):
    model, processor = whisper_salad
    inputs = processor(text="Hear <|audio|>:", audio=tone(1.0))
    cached = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
    torch.testing.assert_close(cached, uncached)


def test_text_iterator_streamer_streams_generation(whisper_salad):
    model, processor = whisper_salad
    inputs = processor(text="Hear <|audio|>:", audio=tone(1.0))
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True)
    thread = threading.Thread(
        target=model.generate,
        kwargs={**inputs, "max_new_tokens": 5, "min_new_tokens": 5, "streamer": streamer},
    )
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) != "" or len(pieces) >= 1


def test_gradient_reaches_adapter_and_not_frozen_encoder():
    model, processor = build_tiny("whisper", "transformer")
    model.train()
    model.audio_tower.requires_grad_(False)
    inputs = processor(text="Hear <|audio|> now", audio=tone(1.0))
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.audio_token_id, -100)
    model(**inputs, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.audio_tower.parameters())
    adapter_grads = [p.grad for p in model.adapter.parameters() if p.requires_grad]
    assert adapter_grads and all(g is not None and g.abs().sum() > 0 for g in adapter_grads)


def test_gradient_checkpointing_gives_same_gradients():
    model, processor = build_tiny("whisper", "transformer")
    model.train()
    inputs = processor(text="Hear <|audio|> now", audio=tone(1.0))
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == processor.audio_token_id, -100)
    model(**inputs, labels=labels).loss.backward()
    plain = [p.grad.clone() for p in model.adapter.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**inputs, labels=labels).loss.backward()
    for before, param in zip(plain, model.adapter.parameters()):
        assert_close_in_dtype(param.grad, before, ulps=OTHER_PATH_ULPS)


def test_model_rejects_placeholder_and_feature_count_mismatch(whisper_salad):
    model, processor = whisper_salad
    inputs = processor(text="Hear <|audio|>", audio=tone(1.0))
    keep = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    keep[0, int((inputs["input_ids"][0] == processor.audio_token_id).nonzero()[0])] = False
    inputs["input_ids"] = inputs["input_ids"][keep][None]
    inputs["attention_mask"] = inputs["attention_mask"][keep][None]
    with pytest.raises(ValueError, match="audio placeholder tokens"):
        model(**inputs)
    text_inputs = processor(text="x")
    text_inputs["input_ids"][0, 0] = processor.audio_token_id
    with pytest.raises(ValueError, match="no `input_features`"):
        model(**text_inputs)


def test_config_json_round_trip(tmp_path):
    model, _ = build_tiny("mimi", "transformer")
    model.config.save_pretrained(tmp_path)
    loaded = SaladConfig.from_pretrained(tmp_path)
    assert loaded.audio_length_spec == model.config.audio_length_spec
    assert loaded.to_dict()["text_config"] == model.config.to_dict()["text_config"]
    with pytest.raises(ValueError, match="adapter_type"):
        SaladConfig(adapter_type="conformer")


def test_from_pretrained_components_keeps_pretrained_weights(component_checkpoints):
    root = component_checkpoints
    model = SaladForConditionalGeneration.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), adapter_type="mlp", adapter_intermediate_size=24
    )
    source = WhisperModel.from_pretrained(root / "whisper").encoder
    torch.testing.assert_close(model.audio_tower.conv1.weight, source.conv1.weight)
    assert not any(p.requires_grad for p in model.audio_tower.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())
    processor = SaladProcessor.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), model.config
    )
    assert processor.audio_token_id == model.config.audio_token_id
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    inputs = processor(text="Hear <|audio|>", audio=tone(0.5))
    assert model(**inputs).logits.isfinite().all()


def test_from_pretrained_components_with_lora_trains_lora_and_adapter_only(component_checkpoints):
    from peft import LoraConfig

    root = component_checkpoints
    model = SaladForConditionalGeneration.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), lora_config=LoraConfig(r=4, lora_alpha=8)
    )
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter", "language_model"}
    lm_trainable = [n for n, p in model.language_model.named_parameters() if p.requires_grad]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    assert not any("lora_" in n for n, _ in model.adapter.named_parameters())


def test_lora_can_be_disabled_for_the_teacher_and_merged(component_checkpoints):
    from peft import LoraConfig

    root = component_checkpoints
    model = SaladForConditionalGeneration.from_pretrained_components(
        str(root / "whisper"),
        str(root / "llm"),
        lora_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),
    ).eval()
    processor = SaladProcessor.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), model.config
    )
    inputs = processor(text="a plain text prompt")
    with torch.no_grad():
        tuned = model(**inputs).logits
        model.set_lora_enabled(False)
        base = model(**inputs).logits
        model.set_lora_enabled(True)
        assert not torch.allclose(tuned, base)
        model.merge_lora()
        assert not model.has_lora()
        assert_close_in_dtype(
            model(**inputs).logits, tuned, ulps=OTHER_PATH_ULPS
        )  # W + BA against W, then BA


def test_lora_settings_are_saved_and_loading_recreates_the_layers(component_checkpoints, tmp_path):
    """A checkpoint with LoRA records its settings in `config.lora`: `from_pretrained` rebuilds the layers
    (the same outputs, with or without LoRA); after `merge_lora` the record is gone and a plain model saves."""
    from peft import LoraConfig

    root = component_checkpoints
    lora = LoraConfig(
        r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["v_proj", "q_proj"], init_lora_weights=False
    )
    model = SaladForConditionalGeneration.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), lora_config=lora
    ).eval()
    assert model.config.lora["r"] == 4 and model.config.lora["target_modules"] == ["q_proj", "v_proj"]
    processor = SaladProcessor.from_pretrained_components(
        str(root / "whisper"), str(root / "llm"), model.config
    )
    inputs = processor(text="a plain text prompt")
    model.save_pretrained(tmp_path / "lora")
    reloaded = SaladForConditionalGeneration.from_pretrained(tmp_path / "lora").eval()
    assert reloaded.has_lora() and reloaded.config.lora == model.config.lora
    with torch.no_grad():
        assert_close_in_dtype(reloaded(**inputs).logits, model(**inputs).logits, ulps=OTHER_INSTANCE_ULPS)
        with model.lora_disabled(), reloaded.lora_disabled():
            assert_close_in_dtype(reloaded(**inputs).logits, model(**inputs).logits, ulps=OTHER_INSTANCE_ULPS)
    with pytest.raises(ValueError, match="already holds LoRA"):
        reloaded.add_lora_to_language_model(LoraConfig(r=2, lora_alpha=4))
    reloaded.merge_lora()
    assert reloaded.config.lora is None
    reloaded.save_pretrained(tmp_path / "merged")
    plain = SaladForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert not plain.has_lora()
    with torch.no_grad():
        assert_close_in_dtype(plain(**inputs).logits, model(**inputs).logits, ulps=OTHER_PATH_ULPS)
