"""Accuracy with a percentile-bootstrap 95% interval, as an `evaluate` module.

import evaluate
metric = evaluate.load("eval/metrics/accuracy_ci")   # a local path: no Hub access needed
metric.compute(predictions=[0, 2, 1], references=[0, 1, 1])
# {'accuracy': 0.667, 'ci95_low': ..., 'ci95_high': ..., 'n': 3}
"""

import datasets
import evaluate

from eval.gap import accuracy_summary

_DESCRIPTION = (
    "Share of predictions equal to the references, with a percentile-bootstrap confidence interval."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted option indices.
    references (`list[int]`): gold option indices.
    num_samples (`int`, defaults to 2000): bootstrap resamples.
    seed (`int`, defaults to 0): bootstrap seed.
Returns:
    accuracy, ci95_low, ci95_high, n
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyCi(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, num_samples=2000, seed=0):
        correct = [int(p == r) for p, r in zip(predictions, references)]
        summary = accuracy_summary(correct, num_samples=num_samples, seed=seed)
        return {
            "accuracy": summary["accuracy"],
            "ci95_low": summary["ci95"][0],
            "ci95_high": summary["ci95"][1],
            "n": summary["n"],
        }
