"""Whisper transcripts computed once (`whisper_transcript`, `TranscriptCache`): the model reads them as it reads its
own, the cache serves every window it has seen without running Whisper, and training on it trains alike."""

from __future__ import annotations

import pytest
import torch
from conftest import OTHER_PATH_ULPS, build_tiny, decoder_tiny, float_tolerance, tone
from test_trainer import config, logged, train_on_speech_rows

from trainers.distillation.transcript_cache import TranscriptCache

SR = 16000


def clips_and_prompts(processor):
    return processor(
        text=["Question: <|audio|>\nAnswer:", "<|audio|> and <|audio|>"],
        audio=[tone(0.6, SR), tone(1.3, SR, 300, seed=1), tone(0.2, SR, 500, seed=2)],
        sampling_rate=SR,
        return_tensors="pt",
    )


def assert_same_transcript(actual, expected) -> None:
    # bitwise: both come from one computation on the same windows in this process
    assert torch.equal(actual.counts, expected.counts)
    for row, count in enumerate(expected.counts.tolist()):
        assert torch.equal(actual.ids[row, :count], expected.ids[row, :count])
        assert torch.equal(actual.states[row, :count], expected.states[row, :count])


def test_a_transcript_handed_in_gives_the_hidden_states_the_model_computes_itself():
    model, processor = decoder_tiny()
    inputs = clips_and_prompts(processor)
    with torch.no_grad():
        own = model(**inputs, return_last_hidden_state=True).last_hidden_state
        transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
        handed = model(
            **inputs, whisper_transcript=transcript, return_last_hidden_state=True
        ).last_hidden_state
    assert torch.equal(handed, own)  # bitwise: the same transcript, the same LM computation


def test_the_cache_runs_whisper_once_per_window_and_keeps_it_on_disk(tmp_path, monkeypatch):
    model, processor = decoder_tiny()
    inputs = clips_and_prompts(processor)
    features, mask = inputs["input_features"], inputs["input_features_mask"]
    expected = model.transcribe(features, mask)
    cache = TranscriptCache(model, tmp_path)
    assert_same_transcript(cache.transcripts(model, features, mask), expected)
    assert (cache.hits, cache.misses) == (0, 3)

    def no_whisper(*args, **kwargs):
        raise AssertionError("Whisper ran for a window the cache holds")

    monkeypatch.setattr(model, "transcribe", no_whisper)
    assert_same_transcript(cache.transcripts(model, features, mask), expected)
    assert (cache.hits, cache.misses) == (3, 3)
    # a new run reads the folder; a window alone is found by its content, whatever batch it came in
    later = TranscriptCache(model, tmp_path)
    alone = later.transcripts(model, features[1:2, :, : int(mask[1].sum())], mask[1:2, : int(mask[1].sum())])
    assert int(alone.counts[0]) == int(expected.counts[1]) and later.hits == 1
    assert torch.equal(alone.states[0], expected.states[1, : int(expected.counts[1])])


def test_another_whisper_or_search_never_reads_the_cached_transcripts(tmp_path):
    model, processor = decoder_tiny()
    inputs = clips_and_prompts(processor)
    TranscriptCache(model, tmp_path).transcripts(
        model, inputs["input_features"], inputs["input_features_mask"]
    )
    for other in (
        decoder_tiny(seed=1)[0],
        decoder_tiny(adapter_decoder_num_beams=3)[0],
        decoder_tiny(adapter_decoder_pad_seconds=1.0)[0],
    ):  # weights; the search; what Whisper reads
        cache = TranscriptCache(other, tmp_path)
        cache.transcripts(other, inputs["input_features"], inputs["input_features_mask"])
        assert (cache.hits, cache.misses) == (0, 3)


def test_generation_takes_a_transcript_handed_in():
    model, processor = decoder_tiny()
    inputs = clips_and_prompts(processor)
    transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
    kwargs = {"max_new_tokens": 3, "do_sample": False}
    with torch.no_grad():
        handed = model.generate(**inputs, whisper_transcript=transcript, **kwargs)
        own = model.generate(**inputs, **kwargs)
    assert torch.equal(handed, own)  # bitwise: the same transcript, the same LM computation


def test_transcripts_that_do_not_fit_are_refused():
    model, processor = decoder_tiny()
    inputs = clips_and_prompts(processor)
    transcript = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
    with pytest.raises(ValueError, match="holds 2 windows' transcripts but `input_features` has 3"):
        model(
            **inputs,
            whisper_transcript=transcript._replace(**{k: v[:2] for k, v in transcript._asdict().items()}),
        )
    with pytest.raises(ValueError, match="needs the `input_features` it was computed from"):
        model(input_ids=inputs["input_ids"][:, :1], whisper_transcript=transcript)
    mlp, mlp_processor = build_tiny("whisper", "mlp")
    with pytest.raises(ValueError, match="is 'mlp', which reads the encoder's states"):
        mlp(**clips_and_prompts(mlp_processor), whisper_transcript=transcript)
    with pytest.raises(ValueError, match="writes none"):
        TranscriptCache(mlp)


def test_training_on_cached_transcripts_trains_as_training_without_them(tmp_path):
    """Two epochs of the same rows: the second reads every window from the cache, and the losses match a run that
    transcribes every window each step (to the float rounding of windows transcribed in other batches)."""

    def run(cache_transcripts: bool):
        model, processor = decoder_tiny()
        args = config(tmp_path / str(cache_transcripts), max_steps=6, cache_transcripts=cache_transcripts)
        return train_on_speech_rows(model, processor, args)

    cached, cached_losses = run(True)
    _, losses = run(False)
    assert cached_losses == pytest.approx(losses, rel=float_tolerance(torch.float32, OTHER_PATH_ULPS)["rtol"])
    assert (
        cached.transcript_cache.hits == cached.transcript_cache.misses > 0
    )  # epoch 2 repeats epoch 1's windows
    rates = logged(cached, "transcript_cache_hit_rate")
    assert rates[0] == 0.0 and rates[-1] == 0.5
