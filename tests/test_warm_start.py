"""The adapter's warm start: audio tokens on the embeddings of the tokens spoken (loss, sampled candidates,
frame targets from word times, the trainer's `frame_embedding` objective), and data files with different columns."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny, tone
from datasets import Dataset
from test_trainer import changed, config, parameters, speech_rows

from trainers.data import (
    BLANK,
    IGNORE,
    BadRowError,
    SaladDistillationCollator,
    Segment,
    frame_targets,
    interleaved_segments,
)
from trainers.losses import frame_embedding_loss, sample_candidates
from trainers.train import load_rows
from trainers.trainer import SaladDistillationTrainer

V, H = 50, 16


def embeddings(seed: int = 0) -> torch.Tensor:
    return torch.randn(V, H, generator=torch.Generator().manual_seed(seed)) * 3


def test_audio_tokens_on_their_targets_embeddings_score_far_better_than_random_ones():
    table = embeddings()
    targets = torch.tensor([3, 3, BLANK, 7, 12, IGNORE])
    on_target = torch.stack([table[3], table[3], table.mean(0), table[7], table[12], torch.randn(H)])
    good = frame_embedding_loss(on_target, targets, table)
    bad = frame_embedding_loss(torch.randn(6, H), targets, table)
    assert good.loss < 0.01 < 1.0 < bad.loss
    assert good.accuracy == 1.0 and good.word_accuracy == 1.0 and good.num_frames == 5


def test_ignored_frames_change_nothing_and_get_no_gradient():
    table = embeddings()
    audio = torch.randn(5, H, requires_grad=True)
    targets = torch.tensor([1, IGNORE, BLANK, 4, IGNORE])
    output = frame_embedding_loss(audio, targets, table)
    output.loss.backward()
    assert audio.grad[[1, 4]].abs().sum() == 0 and audio.grad[[0, 2, 3]].abs().sum() > 0
    kept = frame_embedding_loss(audio.detach()[[0, 2, 3]], targets[[0, 2, 3]], table)
    torch.testing.assert_close(output.loss.detach(), kept.loss)


def test_loss_is_cross_entropy_over_negative_squared_distances():
    table = embeddings()
    audio, targets = torch.randn(4, H), torch.tensor([0, 5, BLANK, 9])
    vocab = torch.cat([table, table.mean(0, keepdim=True)])
    scores = -torch.cdist(audio, vocab).pow(2) / 2.0
    reference = F.cross_entropy(scores, torch.tensor([0, 5, V, 9]))
    torch.testing.assert_close(frame_embedding_loss(audio, targets, table, temperature=2.0).loss, reference)


def test_sampled_candidates_hold_every_target_and_renumber_them():
    targets = torch.tensor([5, 9, 5, 30, 2])
    candidates, renumbered = sample_candidates(targets, V, num_negatives=10)
    assert len(candidates) == 4 + 10 and len(set(candidates.tolist())) == len(candidates)
    assert torch.equal(candidates[renumbered], targets)  # bitwise: integer token ids


def test_sampling_every_token_gives_the_full_vocabulary_loss():
    table = embeddings()
    audio, targets = torch.randn(6, H), torch.tensor([4, 8, 15, BLANK, 4, 20])
    full = frame_embedding_loss(audio, targets, table, temperature=50.0)
    every = frame_embedding_loss(audio, targets, table, temperature=50.0, num_negatives=V)
    torch.testing.assert_close(full.loss, every.loss)
    fewer = frame_embedding_loss(audio, targets, table, temperature=50.0, num_negatives=5)
    assert fewer.loss < full.loss  # fewer competitors, a smaller loss: the sampled softmax is a bound


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="frame targets for"):
        frame_embedding_loss(torch.randn(5, H), torch.tensor([1, 2]), embeddings())


class WordTokenizer:
    """One id per word (its position in VOCAB), so targets can be read back."""

    VOCAB = ["the", "quick", "brown", "fox"]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.VOCAB.index(word) for word in text.split()]}


def test_frame_targets_follow_the_word_times():
    audio = np.zeros(16000)  # 1 s: 10 audio tokens of 0.1 s, centres at 0.05, 0.15, ...
    segment = Segment("speech", "the quick fox", audio, [(0.0, 0.2), (0.3, 0.6), (0.8, 1.0)])
    targets = frame_targets(segment, 10, WordTokenizer(), 16000, leading_space=False)
    assert targets == [0, 0, BLANK, 1, 1, 1, BLANK, BLANK, 3, 3]
    assert frame_targets(Segment("speech", "the", audio), 4, WordTokenizer(), 16000, False) == [IGNORE] * 4
    with pytest.raises(BadRowError, match="word times"):
        frame_targets(Segment("speech", "the fox", audio, [(0.0, 0.5)]), 4, WordTokenizer(), 16000, False)


def test_interleaved_speech_spans_carry_word_times_from_their_own_start():
    words = "the quick brown fox the quick brown fox".split()
    starts = [0.5 * i for i in range(len(words))]
    segments = interleaved_segments(
        words, starts, [s + 0.4 for s in starts], np.zeros(16000 * 4), 16000, random.Random(0), (2, 2), (2, 3)
    )
    for segment in (s for s in segments if s.kind == "speech"):
        assert segment.word_times[0][0] == 0.0 and len(segment.word_times) == len(segment.text.split())
        assert segment.word_times[-1][1] <= segment.audio.size / 16000 + 1e-9


def test_collator_gives_one_frame_target_per_audio_token(whisper_salad):
    _, processor = whisper_salad
    rows = speech_rows(4) + [
        {"text": "no timestamps here", "audio": {"array": tone(0.7), "sampling_rate": 16000}}
    ]
    batch = SaladDistillationCollator(processor, text_span=(2, 4), speech_span=(2, 3))(rows)
    placeholders = int((batch["input_ids"] == processor.audio_token_id).sum())
    targets = batch["frame_targets"]
    assert targets.shape == (placeholders,)
    assert (targets >= 0).any() and (
        targets == IGNORE
    ).any()  # aligned rows give tokens, the last one nothing
    assert set(targets[targets >= 0].tolist()) <= set(batch["teacher_input_ids"].reshape(-1).tolist())


@pytest.mark.parametrize(("probability", "whole"), [(0.0, True), (1.0, False)])
def test_interleave_probability_chooses_between_spans_and_whole_utterances(whisper_salad, probability, whole):
    _, processor = whisper_salad
    row = speech_rows(1)[0]
    collator = SaladDistillationCollator(
        processor, text_span=(2, 3), speech_span=(2, 3), continuation="Repeat: {transcript}",
        interleave_probability=probability,
    )  # fmt: skip
    segments = collator.row_to_segments(row)
    assert (len(segments) == 2 and segments[0].text == row["text"]) == whole
    assert (segments[-1].text == "Repeat: " + row["text"]) == whole


def test_frame_embedding_objective_trains_the_adapter_alone(tmp_path):
    model, processor = build_tiny("whisper", "mlp")
    rows = [row for row in speech_rows() if row["audio"] is not None]
    args = config(tmp_path, objective="frame_embedding", text_only_ratio=0.0, frame_num_negatives=20)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )
    adapter, llm = parameters(model.adapter), parameters(model.language_model)
    trainer.train()
    assert changed(adapter, model.adapter) and not changed(llm, model.language_model)
    logged = [entry for entry in trainer.state.log_history if "frame_accuracy" in entry]
    assert logged and all(entry["aligned_frames"] > 0 and entry["loss"] > 0 for entry in logged)


def test_ctc_adapter_warm_start_trains_its_classifier_at_its_own_temperature(tmp_path):
    model, processor = build_tiny("whisper", "ctc", adapter_ctc_temperature=2.0)
    rows = [row for row in speech_rows() if row["audio"] is not None]
    args = config(
        tmp_path,
        objective="frame_embedding",
        text_only_ratio=0.0,
        frame_num_negatives=20,
        frame_temperature=2.0,
    )
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )
    adapter = parameters(model.adapter)
    trainer.train()
    assert changed(adapter, model.adapter)
    mismatched = SaladDistillationTrainer(
        model=model, args=config(tmp_path, objective="frame_embedding", text_only_ratio=0.0),
        processing_class=processor, train_dataset=Dataset.from_list(rows),
    )  # fmt: skip
    with pytest.raises(ValueError, match="adapter_ctc_temperature"):
        mismatched.train()


def test_frame_loss_weight_adds_the_weighted_frame_loss_to_the_distillation_loss(tmp_path):
    model, processor = build_tiny("whisper", "mlp")
    rows = [row for row in speech_rows() if row["audio"] is not None][:3]
    batch = SaladDistillationCollator(
        processor, continuation="Repeat: {transcript}", interleave_probability=0.5
    )(rows)
    batch = {k: v for k, v in batch.items() if k not in ("rows_in_batch", "bad_row_reasons")}

    def trainer(weight):
        args = config(tmp_path, alpha=0.5, frame_loss_weight=weight, frame_num_negatives=None)
        return SaladDistillationTrainer(model=model, args=args, processing_class=processor,
                                        train_dataset=Dataset.from_list(rows))  # fmt: skip

    plain, weighted = trainer(0.0), trainer(0.5)
    frame = plain.frame_embedding_output(model, batch).loss
    tokens = len(batch["target_ids"])
    torch.testing.assert_close(
        weighted.compute_loss(model, batch), plain.compute_loss(model, batch) + 0.5 * frame
    )
    # Under gradient accumulation the term is weighted by the micro-batch's share of the supervised tokens.
    torch.testing.assert_close(
        weighted.compute_loss(model, batch, num_items_in_batch=2 * tokens),
        plain.compute_loss(model, batch, num_items_in_batch=2 * tokens) + 0.25 * frame,
    )
    mode = "train" if model.training else "eval"
    assert weighted._metrics[f"{mode}_frame_loss"] and not plain._metrics[f"{mode}_frame_loss"]
    for bad in ({"frame_loss_weight": -1.0}, {"frame_loss_weight": 1.0, "objective": "frame_embedding"}):
        with pytest.raises(ValueError, match="frame_loss_weight"):
            config(tmp_path, **bad)


def test_frame_embedding_objective_refuses_a_text_only_batch_and_llm_training(tmp_path):
    with pytest.raises(ValueError, match="train_llm='frozen'"):
        config(tmp_path, objective="frame_embedding", train_llm="lora")
    with pytest.raises(ValueError, match="objective must be one of"):
        config(tmp_path, objective="conformer")
    with pytest.raises(ValueError, match="interleave_probability"):
        config(tmp_path, interleave_probability=1.5)
    model, processor = build_tiny("whisper", "mlp")
    text_row = {"text": "only words here", "audio": None}
    trainer = SaladDistillationTrainer(
        model=model, args=config(tmp_path, objective="frame_embedding"), processing_class=processor,
        train_dataset=Dataset.from_list([text_row] * 4),
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs speech in every batch"):
        trainer.train()


def test_data_files_with_different_columns_load_as_one_dataset(tmp_path):
    aligned = {
        "text": "a b",
        "audio": "x.wav",
        "words": ["a", "b"],
        "word_starts": [0.0, 0.5],
        "word_ends": [0.4, 0.9],
    }
    human = {"text": "hello", "audio": "y.wav", "name": "prompt"}
    for name, row in (("tts.jsonl", aligned), ("human.jsonl", human)):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    files = [str(tmp_path / "tts.jsonl"), str(tmp_path / "human.jsonl")]
    for streaming in (False, True):
        rows = list(load_rows(None, files, "train", streaming))
        assert [row["text"] for row in rows] == ["a b", "hello"]
        assert rows[0]["name"] is None and rows[1]["words"] is None and rows[0]["words"] == ["a", "b"]


def test_ctc_loss_is_low_for_the_spoken_order_and_high_for_another():
    from trainers.losses import ctc_token_loss

    embeddings = torch.eye(8) * 3.0
    blank = embeddings.mean(0)
    frames = torch.stack([embeddings[2], embeddings[2], blank, embeddings[5], blank])[None]
    mask = torch.ones(1, 5, dtype=torch.bool)
    lengths = torch.tensor([2])
    right = ctc_token_loss(frames, mask, embeddings, torch.tensor([2, 5]), lengths, temperature=0.05)
    wrong = ctc_token_loss(frames, mask, embeddings, torch.tensor([5, 2]), lengths, temperature=0.05)
    assert right.loss < 1e-3 < 10 < wrong.loss and right.num_tokens == 2
    every = ctc_token_loss(frames, mask, embeddings, torch.tensor([2, 5]), lengths, 0.05, num_negatives=100)
    torch.testing.assert_close(every.loss, right.loss)  # sampling every other token is the full vocabulary
    with pytest.raises(ValueError, match="transcripts"):
        ctc_token_loss(frames, mask, embeddings, torch.tensor([2, 5, 1]), lengths)


def test_collator_gives_each_clip_its_transcript_ids(whisper_salad):
    model, processor = whisper_salad
    collator = SaladDistillationCollator(
        processor, text_span=(2, 3), speech_span=(2, 3), interleave_probability=1.0
    )
    batch = collator([row for row in speech_rows() if row["audio"] is not None][:3])
    num_clips = batch["input_features"].shape[0]
    assert batch["clip_target_lengths"].shape[0] == num_clips == int(batch["clip_windows"].sum())
    assert int(batch["clip_target_lengths"].sum()) == batch["clip_targets"].shape[0] > 0


def test_ctc_objective_trains_a_ctc_adapter_alone_and_refuses_other_adapters(tmp_path):
    rows = [row for row in speech_rows() if row["audio"] is not None]
    model, processor = build_tiny("whisper", "ctc")
    args = config(
        tmp_path, objective="ctc", text_only_ratio=0.0, frame_num_negatives=20, interleave_probability=0.0
    )
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )
    adapter, llm = parameters(model.adapter), parameters(model.language_model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss)) and result.training_loss > 0
    assert changed(adapter, model.adapter) and not changed(llm, model.language_model)
    mlp, processor = build_tiny("whisper", "mlp")
    trainer = SaladDistillationTrainer(
        model=mlp, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )
    with pytest.raises(ValueError, match="trains a 'ctc' adapter"):
        trainer.train()
