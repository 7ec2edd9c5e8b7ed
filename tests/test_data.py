"""Interleaving, student/teacher position mapping, collation and bad-row accounting."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile
import torch
from conftest import tone
from test_trainer import speech_rows

from trainers.assets.asterisk import asterisk_prompts
from trainers.assets.models import whisper_tiny_en_path
from trainers.distillation.config import SaladDistillationConfig
from trainers.distillation.data import (
    BadRowError,
    SaladDistillationCollator,
    Segment,
    collate_examples,
    encode_segments,
    interleaved_segments,
    load_rows,
    plan_interleaving,
)


def check_pairs(batch, processor, examples):
    """Every student position whose next token is text is paired with the teacher position that predicts
    the same token, and no other position is supervised."""
    student = batch["input_ids"].reshape(-1)
    teacher = batch["teacher_input_ids"].reshape(-1)
    s_index, t_index, targets = batch["student_index"], batch["teacher_index"], batch["target_ids"]
    assert torch.equal(student[s_index + 1], targets)  # bitwise: integer token ids
    assert torch.equal(teacher[t_index + 1], targets)
    assert not (targets == processor.audio_token_id).any()
    # exhaustiveness: count student positions (within real tokens) followed by a text token
    mask = batch["attention_mask"]
    expected = 0
    for row in range(mask.shape[0]):
        ids = batch["input_ids"][row][mask[row].bool()]
        expected += int((ids[1:] != processor.audio_token_id).sum())
    assert len(targets) == expected
    assert len(set(s_index.tolist())) == len(s_index)


SPEECH_LAYOUTS = {
    "speech_at_start": ["speech", "text", "text"],
    "speech_in_middle": ["text", "speech", "text"],
    "speech_at_end": ["text", "text", "speech"],
    "several_clips": ["speech", "text", "speech", "text", "speech"],
}


def make_segments(layout, seed=0):
    words = "the quick brown fox jumps over the lazy dog and runs far away".split()
    rng = np.random.default_rng(seed)
    segments = []
    for index, kind in enumerate(layout):
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 6))))
        audio = tone(float(rng.uniform(0.2, 1.0)), 16000, seed=index) if kind == "speech" else None
        segments.append(Segment(kind, text, audio))
    return segments


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_mapping_pairs_same_next_token_for_all_layouts(whisper_salad, padding_side):
    _, processor = whisper_salad
    examples = [
        encode_segments(make_segments(layout, seed), processor)
        for seed, layout in enumerate(SPEECH_LAYOUTS.values())
    ]
    # prompts of different lengths: a text-only example and one with a long text prefix
    examples.append(
        encode_segments([Segment("text", "a plain text only example with no audio at all")], processor)
    )
    examples.append(
        encode_segments(
            [Segment("text", "a much longer prompt " * 5), *make_segments(["speech", "text"], 9)], processor
        )
    )
    batch = collate_examples(examples, processor, padding_side)
    check_pairs(batch, processor, examples)
    num_clips = sum(len(e.clips) for e in examples)
    assert int(batch["input_features_mask"].any(-1).sum()) == num_clips
    assert int((batch["input_ids"] == processor.audio_token_id).sum()) == sum(
        processor.length_spec.num_tokens(c.size) for e in examples for c in e.clips
    )


def test_text_after_speech_is_predicted_from_last_audio_and_last_transcript_token(whisper_salad):
    _, processor = whisper_salad
    example = encode_segments([Segment("speech", "one two", tone(0.5)), Segment("text", "three")], processor)
    first_pair = (example.student_positions[0], example.teacher_positions[0])
    assert example.student_ids[first_pair[0]] == processor.audio_token_id
    assert example.student_ids[first_pair[0] + 1] != processor.audio_token_id
    transcript_ids = processor.tokenizer("one two", add_special_tokens=False)["input_ids"]
    assert example.teacher_ids[first_pair[1]] == transcript_ids[-1]


def test_text_only_example_supervises_every_next_token(whisper_salad):
    _, processor = whisper_salad
    example = encode_segments([Segment("text", "one two three four")], processor)
    assert example.student_ids == example.teacher_ids
    assert example.student_positions == example.teacher_positions == list(range(len(example.student_ids) - 1))


def test_plan_interleaving_alternates_and_covers_all_words():
    rng = random.Random(0)
    for num_words in [1, 7, 40, 200]:
        plan = plan_interleaving(num_words, rng)
        assert plan[0][1] == 0 and plan[-1][2] == num_words
        assert all(a[2] == b[1] and a[0] != b[0] for a, b in zip(plan, plan[1:]))
        for kind, start, end in plan[:-1]:
            low, high = (10, 30) if kind == "text" else (5, 15)
            assert low <= end - start <= high


def test_interleaved_segments_cut_audio_on_word_boundaries():
    words = [f"w{i}" for i in range(60)]
    starts = [i * 0.25 for i in range(60)]
    ends = [s + 0.2 for s in starts]
    audio = tone(15.0)
    segments = interleaved_segments(words, starts, ends, audio, 16000, random.Random(1))
    assert " ".join(s.text for s in segments) == " ".join(words)
    assert sum(s.audio.size for s in segments if s.kind == "speech") <= audio.size
    for segment in segments:
        if segment.kind == "speech":
            n_words = len(segment.text.split())
            assert abs(segment.audio.size - n_words * 0.25 * 16000) <= 0.25 * 16000


def test_inconsistent_alignment_is_a_bad_row():
    with pytest.raises(BadRowError):
        interleaved_segments(["a", "b"], [0.0], [0.1], tone(1.0), 16000, random.Random(0))
    with pytest.raises(BadRowError):
        interleaved_segments(["a", "b"], [0.0, 5.0], [0.1, 5.5], tone(1.0), 16000, random.Random(0))


def test_collator_reads_paths_arrays_and_text_rows(whisper_salad, tmp_path):
    _, processor = whisper_salad
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(1.0, 8000), 8000)
    rows = [
        {"text": "hello there", "audio": str(path)},
        {"text": "general text without audio", "audio": None},
        {"text": "an array clip", "audio": {"array": tone(0.8), "sampling_rate": 16000}},
    ]
    batch = SaladDistillationCollator(processor)(rows)
    assert batch["input_ids"].shape[0] == 3
    assert batch["input_features"].shape[0] == 2


def test_bad_rows_are_counted_and_stop_the_run_past_the_threshold(whisper_salad, tmp_path):
    _, processor = whisper_salad
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    collator = SaladDistillationCollator(processor, max_bad_row_fraction=0.05)
    good = {"text": "fine", "audio": {"array": tone(0.3), "sampling_rate": 16000}}
    batch = collator([good, {"text": "bad", "audio": str(broken)}, good])
    assert batch["input_ids"].shape[0] == 2
    assert collator.stats["rows"] == 3 and collator.stats["bad_rows"] == 1
    assert collator.stats["bad_row_reasons"] == {"audio could not be decoded": 1}
    nan_row = {"text": "bad", "audio": {"array": np.full(10, np.nan), "sampling_rate": 16000}}
    with pytest.raises(ValueError, match="rows could not be used"):
        for _ in range(10):  # one bad row in two: past 5% of max(rows, 100) after six batches
            collator([good, nan_row])
    assert collator.stats["bad_row_reasons"]["audio is not usable"] >= 5


@pytest.mark.assets
def test_word_timestamps_from_whisper_asr_cut_real_speech(whisper_salad):
    """Whisper tiny.en word timestamps on a recorded prompt feed the interleaving builder directly."""
    import jiwer

    try:
        clip = next(c for c in asterisk_prompts() if c.name == "agent-alreadyon")
        whisper = whisper_tiny_en_path()
    except (FileNotFoundError, ModuleNotFoundError) as error:
        pytest.skip(str(error))
    from transformers import pipeline

    from trainers.distillation.data import word_timestamps_with_asr

    alignment = word_timestamps_with_asr(
        pipeline("automatic-speech-recognition", model=str(whisper)), clip.audio, 16000
    )
    hypothesis = " ".join(alignment["words"]).lower().replace(".", "")
    assert jiwer.wer(clip.transcript.lower().replace(".", ""), hypothesis) < 0.2
    assert alignment["word_starts"] == sorted(alignment["word_starts"])
    assert alignment["word_ends"][-1] <= clip.audio.size / 16000 + 0.05
    segments = interleaved_segments(**alignment, audio=clip.audio, sampling_rate=16000, rng=random.Random(0),
                                     text_span=(2, 4), speech_span=(2, 3))  # fmt: skip
    assert any(s.kind == "speech" for s in segments) and any(s.kind == "text" for s in segments)


def test_chat_format_renders_the_inference_prompt_and_supervises_only_the_answer(whisper_salad):
    """A chat_format row is what the pipeline feeds the model (the processor's own chat rendering of the clip and
    the instruction), then the answer and its end of turn; the teacher reads the transcript in place of the clip."""
    _, processor = whisper_salad
    transcript, clip = "the quick brown fox", tone(0.8)
    collator = SaladDistillationCollator(
        processor, continuation="{transcript}", interleave_probability=0.0, chat_format=True,
        chat_instruction="repeat what was said",
    )  # fmt: skip
    row = {"text": transcript, "audio": {"array": clip, "sampling_rate": 16000}}
    example = encode_segments(collator.row_to_segments(row), processor, add_special_tokens=False)
    user = [{"type": "audio", "audio": clip}, {"type": "text", "text": "repeat what was said"}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True, return_tensors="pt"
    )[0].tolist()
    answer = processor.tokenizer(transcript + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert example.student_ids == prompt + answer
    assert collator([row])["input_ids"][0].tolist() == prompt + answer  # and so is the batch
    teacher_chat = [{"role": "user", "content": transcript + "\nrepeat what was said"}]
    teacher_prompt = processor.tokenizer.apply_chat_template(
        teacher_chat, add_generation_prompt=True, tokenize=False
    )
    assert (
        example.teacher_ids
        == processor.tokenizer(teacher_prompt, add_special_tokens=False)["input_ids"] + answer
    )
    # Supervised: the answer's tokens and the end of turn, each predicted by the position before it.
    assert example.target_ids == answer
    assert [example.student_ids[p + 1] for p in example.student_positions] == answer
    assert [example.teacher_ids[p + 1] for p in example.teacher_positions] == answer


def test_chat_format_speaks_word_aligned_rows_whole_and_needs_no_interleaving(whisper_salad, tmp_path):
    _, processor = whisper_salad
    words = "the quick brown fox".split()
    row = {"text": " ".join(words), "audio": {"array": tone(0.8), "sampling_rate": 16000}, "words": words,
           "word_starts": [0.0, 0.2, 0.4, 0.6], "word_ends": [0.15, 0.35, 0.55, 0.75]}  # fmt: skip
    collator = SaladDistillationCollator(processor, chat_format=True, interleave_probability=0.0)
    kinds = [segment.kind for segment in collator.row_to_segments(row)]
    assert kinds == ["text", "speech", "text", "text"]
    with pytest.raises(ValueError, match="interleave_probability=0"):
        SaladDistillationConfig(output_dir=str(tmp_path), chat_format=True, interleave_probability=0.5)


def question_row(**columns) -> dict:
    words = "what is a canvas".split()
    return {
        "text": " ".join(words), "audio": {"array": tone(0.8), "sampling_rate": 16000}, "words": words,
        "word_starts": [0.0, 0.2, 0.4, 0.6], "word_ends": [0.15, 0.35, 0.55, 0.75],
        "prompt": "Question: ", "continuation": "\nAnswer: A heavy cloth", **columns,
    }  # fmt: skip


def test_a_row_with_its_own_prompt_and_continuation_is_a_spoken_question(whisper_salad):
    """The student reads `Question: <clip>\\nAnswer: ...` token for token as the harness writes it, the teacher
    reads the question in the clip's place, and only the continuation is supervised, never the prompt."""
    _, processor = whisper_salad
    tokenizer = processor.tokenizer
    collator = SaladDistillationCollator(
        processor, continuation="Repeat: {transcript}", interleave_probability=1, text_span=(1, 1),
        speech_span=(1, 1),
    )  # fmt: skip
    segments = collator.row_to_segments(question_row())
    assert [(s.kind, s.supervised) for s in segments] == [("text", False), ("speech", True), ("text", True)]
    example = encode_segments(segments, processor)
    clip = processor.length_spec.num_tokens(tone(0.8).size)
    harness = processor.expand_placeholders(
        [f"Question: {processor.audio_token}\nAnswer: A heavy cloth"], [clip]
    )
    assert example.student_ids == tokenizer(harness[0])["input_ids"]
    answer = tokenizer("\nAnswer: A heavy cloth", add_special_tokens=False)["input_ids"]
    assert example.target_ids == answer
    assert tokenizer.decode(example.teacher_ids).endswith("Question: what is a canvas\nAnswer: A heavy cloth")
    plain = {key: value for key, value in question_row().items() if key not in ("prompt", "continuation")}
    interleaved = collator.row_to_segments(plain)  # without its own continuation the row is interleaved
    assert [s.text for s in interleaved] == ["what", "is", "a", "canvas"]


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"continuation": "  "}, "continuation"),
        ({"prompt": ""}, "prompt"),
        ({"continuation": 3}, "continuation"),
    ],
)
def test_an_empty_own_prompt_or_continuation_is_a_counted_bad_row(whisper_salad, columns, reason):
    _, processor = whisper_salad
    collator = SaladDistillationCollator(processor)
    good = question_row()
    batch = collator([good, question_row(**columns)])
    assert batch["input_ids"].shape[0] == 1 and batch["bad_row_reasons"] == {reason: 1}


def test_interleaved_speech_spans_carry_word_times_from_their_own_start():
    words = "the quick brown fox the quick brown fox".split()
    starts = [0.5 * i for i in range(len(words))]
    segments = interleaved_segments(
        words, starts, [s + 0.4 for s in starts], np.zeros(16000 * 4), 16000, random.Random(0), (2, 2), (2, 3)
    )
    for segment in (s for s in segments if s.kind == "speech"):
        assert segment.word_times[0][0] == 0.0 and len(segment.word_times) == len(segment.text.split())
        assert segment.word_times[-1][1] <= segment.audio.size / 16000 + 1e-9


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
