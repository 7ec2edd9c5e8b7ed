"""The `"ctc"` adapter: frame classification, blank dropping and repeat merging, and an LM that reads the kept
tokens exactly as if the dropped ones had never been in the sequence (forward, batching, generation)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    OTHER_INSTANCE_ULPS,
    OTHER_PATH_ULPS,
    assert_close_in_dtype,
    backward_through_the_lm,
    build_tiny,
    tone,
)

from modeling_salad import SaladConfig, SaladForConditionalGeneration
from modeling_salad.modeling_salad import SaladCTCAdapter, blank_embedding

SR = 16000


def ctc_tiny(drop_fraction: float = 0.5, seed: int = 0):
    """A tiny Whisper model with a `"ctc"` adapter whose frames fall on several tokens, with the blank
    threshold set so that about `drop_fraction` of the frames of a reference clip count as blank."""
    model, processor = build_tiny("whisper", "ctc", seed=seed)
    with torch.no_grad():
        model.adapter.down_proj.weight.mul_(10.0)  # spread the random frames over several tokens
        inputs = processor(audio=tone(1.0, SR), sampling_rate=SR)
        frames, mask = model.get_frame_embeddings(inputs["input_features"], inputs["input_features_mask"])
        blank = model.adapter.frame_log_probs(frames, model.get_input_embeddings().weight).exp()[..., -1][
            mask
        ]
    model.adapter.blank_threshold = float(blank.quantile(1 - drop_fraction))
    return model, processor


def compacted_logits(model, inputs) -> list[torch.Tensor]:
    """Reference: each row's LM logits on its embeddings with the dropped audio positions removed."""
    with torch.no_grad():
        embeds, dropped = model.embed_inputs(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
        )
        rows = []
        for row in range(embeds.shape[0]):
            keep = inputs["attention_mask"][row].bool() & ~dropped[row]
            rows.append(model.language_model(inputs_embeds=embeds[row][keep][None]).logits[0])
    return rows


def make_adapter(temperature: float = 0.01, threshold: float = 0.5, top_k: int = 0) -> SaladCTCAdapter:
    config = SaladConfig(
        adapter_type="ctc",
        adapter_ctc_temperature=temperature,
        adapter_ctc_blank_threshold=threshold,
        adapter_ctc_top_k=top_k,
        audio_token_id=5,
    )
    return SaladCTCAdapter(config)


def test_compress_drops_blanks_merges_repeats_and_right_aligns():
    embeddings = torch.eye(6) * 3.0  # token i sits at 3 * e_i; the blank is the mean embedding
    blank = blank_embedding(embeddings)[0]
    frames = torch.stack(
        [embeddings[2], embeddings[2], blank, embeddings[3], embeddings[3], embeddings[2], blank]
    )
    frames = torch.stack([frames, torch.stack([blank, embeddings[4], blank, embeddings[4]] + [blank] * 3)])
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    adapter = make_adapter()
    embeds, keep = adapter.compress(frames, mask, embeddings)
    assert adapter.greedy_tokens(frames, mask, embeddings) == [[2, 3, 2], [4, 4]]
    # row 0: runs 2 | 3 | 2 (the trailing blank dropped), written at the last three valid positions
    assert keep[0].tolist() == [False, False, False, False, True, True, True]
    # 1e-4: the peaked mixture's weight off its top token, not a rounding error
    torch.testing.assert_close(embeds[0, 4:], embeddings[[2, 3, 2]], atol=1e-4, rtol=0)
    # row 1: a blank between two 4s keeps both (CTC's collapse), and padding is never kept
    assert keep[1].tolist() == [False, False, True, True, False, False, False]
    torch.testing.assert_close(embeds[1, 2:4], embeddings[[4, 4]], atol=1e-4, rtol=0)
    assert embeds[~keep].abs().max() == 0


def test_compress_keeps_one_token_of_an_all_blank_window_and_never_the_audio_token():
    embeddings = torch.eye(6) * 3.0
    blank = blank_embedding(embeddings)[0]
    frames = torch.stack([blank, blank * 0.9 + embeddings[1] * 0.1, blank])[None]
    embeds, keep = make_adapter().compress(frames, torch.ones(1, 3, dtype=torch.bool), embeddings)
    assert keep.tolist() == [[False, False, True]]
    # a frame exactly on the audio token's embedding (id 5) is read as another token or the blank
    adapter = make_adapter(temperature=1.0)
    log_probs = adapter.frame_log_probs(embeddings[5][None], embeddings)
    assert log_probs[0, 5] == float("-inf")


def test_top_k_mixes_only_the_most_likely_tokens():
    embeddings = torch.randn(50, 8)
    frames = embeddings[[3, 7]] + 0.3 * torch.randn(2, 8)
    mask = torch.ones(1, 2, dtype=torch.bool)
    dense, keep = make_adapter(temperature=5.0, threshold=1.0, top_k=0).compress(
        frames[None], mask, embeddings
    )
    top1, _ = make_adapter(temperature=5.0, threshold=1.0, top_k=1).compress(frames[None], mask, embeddings)
    assert keep.all()
    nearest = (frames[:, None] - embeddings[None]).pow(2).sum(-1).argmin(-1)
    torch.testing.assert_close(top1[0], embeddings[nearest])
    assert not torch.allclose(dense, top1)


def test_forward_equals_the_lm_on_the_compacted_sequence():
    model, processor = ctc_tiny()
    texts = ["Say <|audio|> again", "<|audio|> then more words, and <|audio|> at the end"]
    clips = [tone(0.9, SR, 300), tone(1.3, SR, 500, seed=1), tone(0.6, SR, 700, seed=2)]
    inputs = processor(text=texts, audio=clips, sampling_rate=SR, padding_side="right")
    with torch.no_grad():
        output = model(**inputs)
    _, dropped = model.embed_inputs(
        inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"]
    )
    assert dropped.any() and not dropped.all()
    for row, reference in enumerate(compacted_logits(model, inputs)):
        keep = inputs["attention_mask"][row].bool() & ~dropped[row]
        assert_close_in_dtype(output.logits[row][keep], reference, ulps=OTHER_PATH_ULPS)
        assert output.attention_mask[row].sum() == keep.sum()


def test_batched_generation_equals_one_by_one_and_the_compacted_reference():
    model, processor = ctc_tiny()
    texts = ["Hear <|audio|>:", "A longer prompt first, then <|audio|> and a question:"]
    clips = [tone(1.2, SR, 300), tone(0.5, SR, 600, seed=3)]
    batch = processor(text=texts, audio=clips, sampling_rate=SR, padding_side="left")
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    generated = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for row, (text, clip) in enumerate(zip(texts, clips)):
        single = processor(text=text, audio=clip, sampling_rate=SR)
        alone = model.generate(**single, **kwargs)[:, single["input_ids"].shape[1] :]
        assert generated[row].tolist() == alone[0].tolist()
        with torch.no_grad():
            embeds, dropped = model.embed_inputs(
                single["input_ids"], single["input_features"], single["input_features_mask"]
            )
        reference = model.language_model.generate(inputs_embeds=embeds[:, ~dropped[0]], **kwargs)
        assert alone[0].tolist() == reference[0, -6:].tolist()
    cached = model.generate(**batch, **kwargs, use_cache=True)
    uncached = model.generate(**batch, **kwargs, use_cache=False)
    torch.testing.assert_close(cached, uncached)


def test_save_load_round_trip_keeps_the_ctc_settings(tmp_path):
    model, processor = ctc_tiny()
    model.config.adapter_ctc_blank_threshold = model.adapter.blank_threshold
    model.save_pretrained(tmp_path)
    reloaded = SaladForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.adapter.blank_threshold == model.adapter.blank_threshold
    inputs = processor(text="Say <|audio|>", audio=tone(0.8, SR), sampling_rate=SR)
    with torch.no_grad():
        assert_close_in_dtype(model(**inputs).logits, reloaded(**inputs).logits, ulps=OTHER_INSTANCE_ULPS)


def test_ctc_adapter_trains_through_the_lm():
    model, processor = ctc_tiny()
    backward_through_the_lm(model, processor)
    grads = [p.grad for p in model.adapter.parameters()]
    assert all(g is not None and g.isfinite().all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "field, value",
    [("adapter_ctc_blank_threshold", 0.0), ("adapter_ctc_temperature", 0.0), ("adapter_ctc_top_k", -1)],
)
def test_config_rejects_bad_ctc_settings(field, value):
    with pytest.raises(ValueError, match=field):
        SaladConfig(adapter_type="ctc", **{field: value})
