"""`salad-prepare-data`: held-out voices stay out of training, offsets give unseen sentences."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile
from conftest import build_tiny, tone

from trainers.distillation.prepare_data import (
    PrepareArguments,
    definition_question,
    definition_question_rows,
    draw_sentences,
    is_held_out,
    split_voices,
    write_text_pool_rows,
)
from trainers.distillation.prepare_data import main as prepare_main


def write_pool(path, count: int) -> None:
    path.write_text(
        "".join(json.dumps({"text": f"sentence number {index} is here"}) + "\n" for index in range(count))
    )


@pytest.mark.parametrize("pool_size", [2000, 44354])
def test_an_offset_draw_never_repeats_the_default_draw(tmp_path, pool_size):
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, pool_size)
    first = round(pool_size * 0.68)  # the embedded default drew 30,000 of 44,354
    trained = draw_sentences(str(pool), first, 40, seed=0)
    fresh = draw_sentences(str(pool), pool_size // 20, 40, seed=0, offset=first)
    assert len(set(fresh)) == len(fresh) and not set(fresh) & set(trained)
    assert draw_sentences(str(pool), first + 10, 40, seed=0)[:first] == trained
    with pytest.raises(ValueError, match="the pool has"):
        draw_sentences(str(pool), pool_size, 40, seed=0, offset=1)


def test_held_out_names_cover_their_variants():
    assert (
        is_held_out("en-us", ["en-us"]) and is_held_out("en-us+f3", ["en-us"]) and is_held_out("slt", ["slt"])
    )
    assert not is_held_out("en-gb+f3", ["en-us"]) and not is_held_out("awb", ["slt"])


class FakeBackend:
    name = "fake"

    def voices(self):
        return ["en-us", "en-us+m1", "en-gb"]


def test_split_voices_and_a_backend_with_only_held_out_voices():
    assert split_voices(FakeBackend(), ["en-us"]) == (["en-gb"], ["en-us", "en-us+m1"])
    with pytest.raises(ValueError, match="nothing is left to train on"):
        split_voices(FakeBackend(), ["en-us", "en-gb"])


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="needs `apt-get install espeak-ng flite`",
)
def test_text_pool_rows_train_and_evaluate_on_disjoint_voices(tmp_path):
    pool = tmp_path / "pool.jsonl"
    write_pool(pool, 40)
    args = PrepareArguments(
        output_dir=str(tmp_path / "out"), source="text_pool", text_pool=str(pool), num_sentences=20,
        eval_fraction=0.25, num_workers=0,
    )  # fmt: skip
    assert write_text_pool_rows(args) == {"train": 15, "eval": 5}
    splits = {
        name: [json.loads(line) for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "eval")
    }
    assert not {row["text"] for row in splits["train"]} & {row["text"] for row in splits["eval"]}
    assert all(not is_held_out(row["voice"], ["en-us", "slt"]) for row in splits["train"])
    assert all(is_held_out(row["voice"], ["en-us", "slt"]) for row in splits["eval"])
    assert {row["backend"] for row in splits["train"]} == {"espeak-ng", "flite"}
    for row in splits["train"] + splits["eval"]:
        audio, rate = soundfile.read(row["audio"])
        assert rate == 16000 and len(row["words"]) == len(row["word_starts"]) == len(row["text"].split())
        assert row["word_ends"][-1] <= audio.size / rate + 0.05


def test_definitions_become_questions_both_ways_and_other_sentences_none():
    sentence = "A nailbrush is a brush used to clean a person's fingernails."
    assert definition_question(sentence, ask_for_term=False) == (
        "What is a nailbrush?",
        "A brush used to clean a person's fingernails",
    )
    assert definition_question(sentence, ask_for_term=True) == (
        "What do you call a brush used to clean a person's fingernails?",
        "A nailbrush",
    )
    assert definition_question("He went to bed dog-tired.", ask_for_term=False) is None


def test_question_rows_carry_the_harness_frame_and_keep_one_row_per_question():
    senses = ["A canvas is a heavy cloth.", "A canvas is the setting for a narrative.", "Not a definition."]
    rows = definition_question_rows(senses * 20, seed=0)
    assert 1 <= len(rows) <= 3  # "What is a canvas?" once, each "What do you call ...?" once
    for question, columns in rows.items():
        assert columns["prompt"] == "Question: "
        assert columns["continuation"] == f"\nAnswer: {columns['answer']}"
        assert question.endswith("?")


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="needs `apt-get install espeak-ng flite`")  # fmt: skip
def test_definition_question_rows_speak_only_the_question(tmp_path):
    pool = tmp_path / "pool.jsonl"
    glosses = [f"A thing{index} is a tool number {index}." for index in range(12)]
    pool.write_text("".join(json.dumps({"text": t, "source": "wordnet/definition"}) + "\n" for t in glosses))
    args = PrepareArguments(
        output_dir=str(tmp_path / "out"), source="definition_questions", text_pool=str(pool), num_sentences=8,
        eval_fraction=0.25, num_workers=0,
    )  # fmt: skip
    assert write_text_pool_rows(args) == {"train": 6, "eval": 2}
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["source"] == "definition_questions" and row["words"] == row["text"].split()
        assert row["text"].startswith("What ") and row["answer"] not in row["text"]
        assert row["continuation"] == "\nAnswer: " + row["answer"]


def test_chat_repeat_rows_ask_to_repeat_the_clip_in_the_chat_template(tmp_path):
    """The shipped recipe's chat "repeat" rows: the clip in the user turn, the transcript as the reply."""
    _, processor = build_tiny("whisper", "mlp")
    processor.save_pretrained(tmp_path / "model")
    soundfile.write(tmp_path / "clip.wav", tone(0.5), 16000)
    rows = [
        {"text": " the lazy dog ", "audio": str(tmp_path / "clip.wav")},
        {"text": "unused", "audio": "x.wav"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    prepare_main(
        ["--source", "chat_repeat", "--rows", str(tmp_path / "rows.jsonl"), "--num_rows", "1",
         "--chat_model", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert row["prompt"] == "<|im_start|>user\n"
    assert row["continuation"] == (
        "\nRepeat what was said.<|im_end|>\n<|im_start|>assistant\nthe lazy dog<|im_end|>\n"
    )
    assert row["duration"] == 0.5 and row["text"] == " the lazy dog "


def test_chat_repeat_needs_the_rows_it_rewrites():
    with pytest.raises(ValueError, match="--rows"):
        PrepareArguments(output_dir="x", source="chat_repeat")
