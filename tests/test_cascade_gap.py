"""benchmarks/cascade_gap.py: a recipe's seeds put together from their per-item `ablate` results."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def cascade_gap(monkeypatch):
    # the script imports its sibling decoder_settings, as when run
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("cascade_gap")


def ablate_result(model: str, shipped: str, cascade: str = "1100", voice: str = "en-us") -> dict:
    """What `ablate --no_ablations` writes for `model`: its answers and the cascade's, one character per item."""
    return {
        "model": model,
        "voice": voice,
        "items": len(cascade),
        "correct_by_item": {"cascade": cascade, "shipped": shipped},
    }


def test_seeds_are_averaged_per_item_before_the_paired_difference(cascade_gap):
    seeds = [ablate_result("s0", "1110"), ablate_result("s1", "1101"), ablate_result("s2", "0110")]
    results = cascade_gap.over_seeds(seeds, baseline=ablate_result("shipped", "1100"))
    assert results["accuracy_per_seed"] == pytest.approx([0.75, 0.75, 0.5])
    assert results["minus_cascade_per_seed"] == pytest.approx([0.25, 0.25, 0.0])
    assert results["minus_cascade_spread"] == pytest.approx([0.0, 0.25])
    # per item: (2/3, 1, 2/3, 1/3) against the cascade's (1, 1, 0, 0)
    assert results["mean_over_seeds"]["accuracy"] == pytest.approx(2 / 3)
    assert results["mean_over_seeds_minus_cascade"]["value"] == pytest.approx(2 / 3 - 1 / 2)
    assert results["mean_over_seeds_minus_baseline"]["value"] == pytest.approx(2 / 3 - 1 / 2)
    low, high = results["mean_over_seeds_minus_cascade"]["ci95"]
    assert low <= 1 / 6 <= high


def test_seeds_measured_against_different_cascades_are_refused(cascade_gap):
    seeds = [ablate_result("s0", "1110"), ablate_result("s1", "1101", cascade="1000")]
    with pytest.raises(ValueError, match="cascades differ"):
        cascade_gap.over_seeds(seeds)


def test_seeds_of_different_voices_are_refused(cascade_gap):
    seeds = [ablate_result("s0", "1110"), ablate_result("s1", "1101", voice="slt")]
    with pytest.raises(ValueError, match="share a voice"):
        cascade_gap.over_seeds(seeds)


def test_a_result_without_per_item_answers_names_the_rerun(cascade_gap):
    old = {"model": "runs/x/checkpoint-200", "voice": "slt", "items": 4}
    with pytest.raises(ValueError, match="run `cascade_gap.py ablate` on it again"):
        cascade_gap.over_seeds([old])


class Item:
    """The part of a `MultipleChoiceItem` that `room` reads."""

    def __init__(self, id: str, spoken_text: str):
        self.id, self.spoken_text = id, spoken_text


def test_room_splits_the_cascades_losses_by_whether_whisper_heard_the_words(cascade_gap):
    items = [Item("a", "What is fifteen minus seven?"), Item("b", "Which desert covers North Africa?"),
             Item("c", "Which animal has a long neck?"), Item("d", "What is a baby cow called?")]  # fmt: skip
    transcripts = [
        "What is 15 minus 7?",  # a numeral for a spelled-out number: misheard, as the WER counts it
        "which desert covers north africa.",  # case and punctuation aside: heard exactly
        "We can't even live famous for a long neck.",
        "What is a baby cow called?",
    ]
    text = [True, True, True, False]
    cascade = [False, False, True, True]
    results = cascade_gap.room(items, transcripts, text, cascade, {"model": [True, False, False, True]})
    heard, misheard = results["groups"]["heard exactly"], results["groups"]["misheard"]
    assert (heard["items"], heard["text_right_cascade_wrong"], heard["cascade_right_text_wrong"]) == (2, 1, 1)
    assert (
        misheard["items"],
        misheard["text_right_cascade_wrong"],
        misheard["cascade_right_text_wrong"],
    ) == (2, 1, 0)
    assert misheard["accuracy"] == {"text": 1.0, "cascade": 0.5, "model": 0.5}
    assert [(row["id"], row["heard_exactly"], row["model"]) for row in results["lost_by_the_cascade"]] == [
        ("a", False, True),
        ("b", True, False),
    ]


def test_room_refuses_transcripts_of_another_set(cascade_gap):
    with pytest.raises(ValueError, match="not the same set"):
        cascade_gap.heard_exactly([Item("a", "Hello?")], ["hello", "again"])


def test_a_cascade_is_reused_only_from_a_run_of_the_same_voice_items_dtype_and_whisper(cascade_gap):
    source = {**ablate_result("shipped", "1100"), "whisper_fingerprint": "abc", "dtype": "float32"}
    cascade_gap.check_cascade_source(source, "en-us", 4, "abc", "float32")
    for voice, items, fingerprint, dtype in (
        ("slt", 4, "abc", "float32"), ("en-us", 3, "abc", "float32"), ("en-us", 4, "other", "float32"),
        ("en-us", 4, "abc", "bfloat16"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match="--cascade_from holds"):
            cascade_gap.check_cascade_source(source, voice, items, fingerprint, dtype)
    written_before = {**ablate_result("shipped", "1100"), "dtype": "float32"}  # no fingerprint recorded
    with pytest.raises(ValueError, match="None"):
        cascade_gap.check_cascade_source(written_before, "en-us", 4, "abc", "float32")
    with pytest.raises(ValueError, match="writes no transcript"):  # a model without Whisper's decoder
        cascade_gap.check_cascade_source(source, "en-us", 4, None, "float32")
