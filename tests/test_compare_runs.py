"""benchmarks/alignment/compare_runs.py: two runs on identical batches, compared step for step."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ALIGNMENT = Path(__file__).resolve().parent.parent / "benchmarks" / "alignment"


@pytest.fixture
def compare_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(ALIGNMENT))  # the script imports its sibling plot_probes, as when run
    return importlib.import_module("compare_runs")


def test_loss_difference_is_averaged_per_window_and_stops_at_the_shorter_log(compare_runs):
    baseline = [4.0, 3.0, 2.0, 1.0, 1.0]
    run = [4.5, 3.5, 1.0, 2.0]  # ran 100 steps at logging_steps 25
    windows = compare_runs.windowed_loss_difference(baseline, run, logging_steps=25, window=50)
    assert windows == [
        {"first_step": 1, "last_step": 50, "mean_loss_difference": 0.5},
        {"first_step": 51, "last_step": 100, "mean_loss_difference": 0.0},
    ]


def test_window_must_be_whole_logging_steps(compare_runs):
    with pytest.raises(ValueError, match="multiple of logging_steps"):
        compare_runs.windowed_loss_difference([1.0], [1.0], logging_steps=25, window=60)


def test_content_gains_are_paired_on_the_steps_both_runs_probed(compare_runs):
    baseline = [{"step": 0, "content_gain_nll": 0.0}, {"step": 500, "content_gain_nll": 0.6}]
    run = [
        {"step": 0, "content_gain_nll": 0.1},
        {"step": 250, "content_gain_nll": 0.2},
        {"step": 500, "content_gain_nll": 0.9},
    ]
    assert compare_runs.shared_probe_gains(baseline, run) == [
        {"step": 0, "baseline": 0.0, "run": 0.1},
        {"step": 500, "baseline": 0.6, "run": 0.9},
    ]
