"""`python -m trainers.prepare_data`: held-out voices stay out of training, offsets give unseen sentences."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile

from trainers.prepare_data import (
    PrepareArguments,
    draw_sentences,
    is_held_out,
    split_voices,
    write_text_pool_rows,
)


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
