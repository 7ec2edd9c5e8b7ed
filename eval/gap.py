"""The text-speech understanding gap and its confidence intervals; its two causes are measured in
`trainers.distillation.misalignment` (forgetting F and misalignment M, next-token divergences over a corpus).

    gap(task)        = accuracy(base LLM, text) - accuracy(SALAD model, speech)
    retention gap    = accuracy(base LLM, text) - accuracy(SALAD model, text)
    over the prior   = accuracy(SALAD model, speech) - accuracy(option prior)

Intervals are percentile bootstraps over items; gaps use paired resampling (the same items for both systems),
which is what makes small offline sets informative.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import bootstrap


def bootstrap_interval(
    values: Sequence[float], num_samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. 0/1 correctness per item).

    `scipy.stats.bootstrap` with the percentile method rather than scipy's default BCa: BCa's jackknife is
    undefined when every value is the same (a small domain answered all right or all wrong), which happens often
    here; such data, and a single value, get the zero-width interval at their mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    if np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    result = bootstrap(
        (values,), np.mean, n_resamples=num_samples, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def accuracy_summary(correct: Sequence[bool], **bootstrap) -> dict:
    correct = np.asarray(correct, dtype=np.float64)
    low, high = bootstrap_interval(correct, **bootstrap)
    return {
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "ci95": [low, high],
        "n": int(correct.size),
    }


def paired_difference(reference: Sequence[bool], system: Sequence[bool], **bootstrap) -> dict:
    """`mean(reference) - mean(system)` over the same items, with a paired bootstrap interval."""
    difference = np.asarray(reference, dtype=np.float64) - np.asarray(system, dtype=np.float64)
    low, high = bootstrap_interval(difference, **bootstrap)
    return {"value": float(difference.mean()) if difference.size else float("nan"), "ci95": [low, high]}


def agreement(choices_a: Sequence[int], choices_b: Sequence[int]) -> float:
    """Share of items where two systems pick the same option (speech vs the option-prior control)."""
    a, b = np.asarray(choices_a), np.asarray(choices_b)
    return float((a == b).mean()) if a.size else float("nan")


def gap_report(
    correct: dict[str, Sequence[bool]],
    choices: dict[str, Sequence[int]],
    domains: Sequence[str],
    reference: str = "base_text",
    speech: str = "salad_speech",
    retention: str = "salad_text",
    prior: str = "prior",
    cascade: str = "cascade",
    **bootstrap,
) -> dict:
    """Accuracy of each system, the gap, retention gap, speech over the prior, speech minus the cascade and prior
    agreement: overall and per domain.

    `correct[system]` and `choices[system]` hold one entry per item, in the same item order for every system.
    """

    def report(indices: np.ndarray) -> dict:
        subset = {name: np.asarray(values)[indices] for name, values in correct.items()}
        out = {"systems": {name: accuracy_summary(values, **bootstrap) for name, values in subset.items()}}
        if reference in subset and speech in subset:
            out["gap"] = paired_difference(subset[reference], subset[speech], **bootstrap)
        if reference in subset and retention in subset:
            out["retention_gap"] = paired_difference(subset[reference], subset[retention], **bootstrap)
        if speech in subset and prior in subset:
            # Paired: a model that mostly answers as the prior does differs from it on few items, so the paired
            # interval is far narrower than the two accuracies' intervals side by side.
            out["speech_over_prior"] = paired_difference(subset[speech], subset[prior], **bootstrap)
        if speech in subset and cascade in subset:
            # What an end-to-end model must at least match: the ASR + LLM cascade, on the same clips.
            out["speech_minus_cascade"] = paired_difference(subset[speech], subset[cascade], **bootstrap)
        if speech in choices and prior in choices:
            out["speech_prior_agreement"] = agreement(
                np.asarray(choices[speech])[indices], np.asarray(choices[prior])[indices]
            )
        return out

    domains = np.asarray(domains)
    result = report(np.arange(domains.size))
    result["domains"] = {domain: report(np.flatnonzero(domains == domain)) for domain in sorted(set(domains))}
    return result
