"""What `make demo` prints about the shipped model: the verdict against the option prior and the paired lines (over
the prior, against the cascade, the gap)."""

from __future__ import annotations

from eval.gap import gap_report
from hub_scripts.demo import difference_line, print_evaluation, prior_verdict


def _report(speech: list[int], prior: list[int], cascade: list[int] | None = None) -> dict:
    text = [1] * len(speech)
    correct = {"base_text": text, "salad_text": text, "salad_speech": speech, "prior": prior}
    if cascade is not None:
        correct["cascade"] = cascade
    choices = {"salad_speech": [0 if c else 1 for c in speech], "prior": [0 if c else 1 for c in prior]}
    return gap_report(correct, choices, ["x"] * len(speech), num_samples=200)


def test_the_verdict_says_clear_only_when_the_spoken_interval_is_above_the_prior():
    heard = _report(speech=[1] * 90 + [0] * 10, prior=[1] * 25 + [0] * 75)
    deaf = _report(speech=[1] * 26 + [0] * 74, prior=[1] * 25 + [0] * 75)
    assert "is clear of the option prior" in prior_verdict(heard["systems"])
    assert "is not clear of the option prior" in prior_verdict(deaf["systems"])
    assert "on these 100 items" in prior_verdict(deaf["systems"])


def test_the_evaluation_prints_speech_over_the_prior_and_against_the_cascade_paired_and_the_gap(capsys):
    shipped = _report(speech=[1] * 40 + [0] * 60, prior=[1] * 30 + [0] * 70, cascade=[1] * 45 + [0] * 55)
    print_evaluation(shipped, shipped)
    printed = capsys.readouterr().out
    over = shipped["speech_over_prior"]
    assert over["value"] == 0.1
    assert (
        difference_line("spoken accuracy over the option prior, paired over the same items", over) in printed
    )
    assert "over the option prior, paired over the same items: +10.0 points" in printed
    assert "text-speech gap of the shipped model: +60.0 points" in printed
    assert "minus the cascade of its own parts (Whisper tiny.en -> SmolLM2): -5.0 points [" in printed
