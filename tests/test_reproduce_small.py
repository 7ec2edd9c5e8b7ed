"""benchmarks/reproduce_small.py: arms compared over seeds and items, where a selection's budget went, and the report."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def reproduce(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling latency.py, as when run
    return importlib.import_module("reproduce_small")


def seed_run(text: str, en_us: str, slt: str, misalignment: float = 0.5, forgetting: float = 0.1) -> dict:
    """One seed of an arm: its answers (one character per item) and M, F after (before: 0.6 and 0.0)."""
    answers = {"salad_text": text, "salad_speech/en-us": en_us, "salad_speech/slt": slt}
    return {
        "answers": {
            "item_ids": ITEM_IDS[: len(text)],
            **{key: [float(c) for c in value] for key, value in answers.items()},
        },
        "before": {"misalignment": 0.6, "forgetting": 0.0},
        "after": {"misalignment": misalignment, "forgetting": forgetting},
    }


ITEM_IDS = ["geography-001", "geography-002", "arithmetic-001", "story-001"]
REFERENCE = {
    "item_ids": ITEM_IDS,
    **{
        key: [float(c) for c in value]
        for key, value in {"base_text": "1111", "cascade/en-us": "1100", "cascade/slt": "1110"}.items()
    },
}
VOICES = ["en-us", "slt"]


def test_arms_are_averaged_over_seeds_item_by_item_then_paired(reproduce):
    arm = [seed_run("1110", "1100", "1110"), seed_run("1111", "1010", "1110")]
    control = [seed_run("1100", "1000", "1100"), seed_run("1100", "1000", "1100")]
    difference = reproduce.compare_arms(arm, control, VOICES)
    # en-us per item: arm (1, .5, .5, 0) against control (1, 0, 0, 0)
    assert difference["salad_speech/en-us"]["value"] == pytest.approx(0.25)
    assert difference["salad_speech/en-us"]["per_seed"] == pytest.approx([0.25, 0.25])
    assert difference["salad_text"]["value"] == pytest.approx(0.375)
    low, high = difference["salad_speech/en-us"]["ci95"]
    assert low <= 0.25 <= high
    only_second = reproduce.compare_arms(arm, control, VOICES, items=[1])
    assert only_second["salad_speech/en-us"]["value"] == pytest.approx(0.5)
    assert only_second["salad_speech/en-us"]["per_seed"] == pytest.approx([1.0, 0.0])
    shuffled = [{**seed, "answers": {**seed["answers"], "item_ids": ITEM_IDS[::-1]}} for seed in control]
    with pytest.raises(ValueError, match="cannot be paired"):
        reproduce.compare_arms(arm, shuffled, VOICES)


def test_an_arm_summary_keeps_each_seed_and_pairs_the_mean_with_the_cascade_and_smollm2(reproduce):
    arm = [seed_run("1110", "1100", "1110", 0.4, 0.2), seed_run("1111", "1010", "1110", 0.5, 0.3)]
    summary = reproduce.arm_summary(arm, REFERENCE, VOICES)
    assert summary["salad_speech/en-us"]["accuracy_per_seed"] == pytest.approx([0.5, 0.5])
    assert summary["salad_speech/en-us"]["minus_cascade"]["value"] == pytest.approx(0.0)
    assert summary["salad_speech/slt"]["minus_cascade"]["value"] == pytest.approx(0.0)
    assert summary["salad_text"]["minus_base_text"]["value"] == pytest.approx(0.875 - 1.0)
    assert summary["misalignment"] == {"before": [0.6, 0.6], "after": [0.4, 0.5]}
    other = [seed_run("1111", "1111", "1111", 0.45, 0.1), seed_run("1111", "1111", "1111", 0.6, 0.1)]
    assert (
        reproduce.seeds_in_direction(
            summary, reproduce.arm_summary(other, REFERENCE, ["en-us"]), "misalignment"
        )
        == "2 of 2"
    )


@pytest.mark.parametrize(
    ("value", "ci95", "per_seed", "sign", "expected"),
    [
        (0.05, [0.01, 0.09], [0.04, 0.06], +1, "reproduced"),
        (0.05, [0.01, 0.09], [0.11, -0.01], +1, "direction only"),  # one seed the other way
        (0.05, [-0.01, 0.09], [0.04, 0.06], +1, "direction only"),
        (-0.02, [-0.05, 0.01], [-0.02, -0.02], +1, "not reproduced"),
        (-0.05, [-0.09, -0.01], [-0.05, -0.05], -1, "reproduced"),
        (0.05, [0.01, 0.09], [0.04, 0.06], -1, "not reproduced"),
    ],
)
def test_a_verdict_follows_the_interval_the_seeds_and_the_predicted_sign(
    reproduce, value, ci95, per_seed, sign, expected
):
    assert reproduce.verdict({"value": value, "ci95": ci95}, per_seed, sign) == expected


@pytest.mark.parametrize(
    ("value", "ci95", "expected"),
    [(0.005, [-0.01, 0.02], True), (0.015, [-0.005, 0.035], False), (-0.005, [-0.02, -0.001], False)],
)
def test_text_is_kept_within_a_point_with_an_interval_covering_zero(reproduce, value, ci95, expected):
    assert reproduce.text_kept({"value": value, "ci95": ci95}) is expected


def test_a_domains_budget_is_its_questions_clusters_share_of_the_selected_seconds(reproduce, tmp_path):
    report = {"clusters": [{"seconds": 30.0}, {"seconds": 10.0}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    np.savez(tmp_path / "clusters.npz", labels=np.array([0, 1]), centroids=np.array([[2.0, 0.0], [0.0, 1.0]]))
    questions = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    budget = reproduce.domain_budget(tmp_path, questions, ["geography", "geography", "arithmetic"])
    assert budget["geography"] == {"budget_vs_even": pytest.approx(1.5), "clusters": {0: 2}}
    assert budget["arithmetic"]["budget_vs_even"] == pytest.approx(0.5)


def test_pool_reach_measures_each_domain_against_the_pools_own_kind(reproduce):
    vectors = {"a cow": [1.0, 0.0], "a calf": [0.8, 0.6], "two plus two": [0.0, 1.0], "a bull": [1.0, 0.0]}

    def encode(texts):
        return np.array([vectors[text] for text in texts])

    items = [SimpleNamespace(spoken_text=text, domain=domain) for text, domain in
             (("a calf", "biology"), ("two plus two", "arithmetic"))]  # fmt: skip
    reach = reproduce.pool_reach(["a cow"], items, encode, own_kind=["a bull"])
    assert reach["own_kind_similarity"] == pytest.approx(1.0)
    assert reach["domains"]["biology"]["similarity"] == pytest.approx(0.8)
    assert reach["domains"]["arithmetic"]["similarity"] == pytest.approx(0.0)
    assert reach["domains"]["biology"]["examples"][0]["nearest"] == "a cow"


def test_a_curve_point_pairs_speech_with_text_and_with_the_cascade(reproduce):
    found = seed_run("1110", "1000", "1110")["answers"]
    point = reproduce.curve_point(found, REFERENCE, VOICES)
    assert point["text_accuracy"] == pytest.approx(0.75)
    assert point["en-us"]["gap_to_text"]["value"] == pytest.approx(0.5)
    assert point["en-us"]["minus_cascade"]["value"] == pytest.approx(-0.25)


def test_the_report_and_plots_are_written_from_the_results(reproduce, tmp_path):
    arms = {name: [seed_run("1110", "1100", "1110"), seed_run("1111", "1010", "1110")] for name in "ab"}
    summary = reproduce.arm_summary(arms["a"], REFERENCE, VOICES)
    difference = reproduce.compare_arms(arms["a"], arms["b"], VOICES)
    point = {
        "step": 40,
        "speech_minutes": 3.5,
        **reproduce.curve_point(arms["a"][0]["answers"], REFERENCE, VOICES),
    }
    measured = {
        "model": "embedded:salad",
        "commit": "abc",
        "machine": {"cpu": "a CPU", "threads": 2, "torch": "2.13.0"},
        "arguments": {"voices": VOICES},
    }
    results = {
        "measured": {claim: measured for claim in ("distillation_vs_nll", "gap_vs_minutes", "latency")},
        "timings_seconds": {"latency": 1.0},
        "claims": {
            "distillation_vs_nll": {"alpha=1": summary, "alpha=0": summary, "alpha1_minus_alpha0": difference,
                                    "forgetting_lower_with_distillation": "2 of 2",
                                    "text_kept": {"alpha=1": True, "alpha=0": False}},
            "gap_vs_minutes": {"0": {**point, "step": 0, "speech_minutes": 0.0}, "40": point},
            "latency": {"salad": {"ttft_median_seconds": 0.3, "ttft_p90_seconds": 0.4, "peak_rss_mb": 1300}},
        },
    }  # fmt: skip
    text = reproduce.markdown(results)
    assert "at commit abc" in text and "alpha1_minus_alpha0" in text and "| 40 | 3.5 |" in text
    assert "alpha=1 yes, alpha=0 no" in text and "`en-us`: not reproduced" in text
    assert reproduce.plot(results, tmp_path) == ["distillation_vs_nll.png", "gap_vs_minutes.png"]
    assert (tmp_path / "gap_vs_minutes.png").stat().st_size > 0


def test_arguments_refuse_unknown_voices_and_uneven_checkpoints(reproduce):
    with pytest.raises(ValueError, match="Unknown voices"):
        reproduce.ReproduceArguments(voices=["en-gb"])
    with pytest.raises(ValueError, match="multiple of --curve_points"):
        reproduce.ReproduceArguments(curve_steps=200, curve_points=3)


def test_a_kept_result_is_reused_under_its_settings_and_refused_under_others(reproduce, tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"value": 1}

    path = tmp_path / "arm" / "result.json"
    first = reproduce.kept(path, {"seed": 0, "train_file": tmp_path}, measure)
    again = reproduce.kept(path, {"seed": 0, "train_file": tmp_path}, measure)
    assert first == again and first["value"] == 1 and len(calls) == 1
    with pytest.raises(ValueError, match="another --work_dir"):
        reproduce.kept(path, {"seed": 1, "train_file": tmp_path}, measure)


def test_answers_are_keyed_by_system_and_voice_over_the_same_items(reproduce, monkeypatch, tmp_path):
    """Text systems are asked once (with the first voice), speech systems in every voice."""
    asked = []

    def run(eval_args):
        asked.append((eval_args.tts_voice, eval_args.systems))
        items = [
            {"id": f"q{k}", "answer": 1, **{system: k % 2 for system in eval_args.systems}} for k in range(4)
        ]
        return {"tasks": {"offline": {"items": items}}}

    monkeypatch.setattr(reproduce, "run", run)
    args = reproduce.ReproduceArguments(work_dir=str(tmp_path))
    found = reproduce.answers("m", ["salad_text", "salad_speech"], tmp_path, args)
    assert asked == [("en-us", ["salad_speech", "salad_text"]), ("slt", ["salad_speech"])]
    assert set(found) == {"item_ids", "salad_text", "salad_speech/en-us", "salad_speech/slt"}
    assert found["salad_speech/slt"] == [0.0, 1.0, 0.0, 1.0] and found["item_ids"] == ["q0", "q1", "q2", "q3"]
