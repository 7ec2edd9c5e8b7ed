"""The text-speech understanding gap of paired items, as an `evaluate` module.

gap = accuracy(text reference) - accuracy(speech system), with a paired bootstrap 95% interval.

import evaluate
gap = evaluate.load("eval/metrics/text_speech_gap")
gap.compute(text_predictions=[0, 1], speech_predictions=[0, 2], references=[0, 1])
"""

import datasets
import evaluate

from eval.gap import accuracy_summary, paired_difference

_DESCRIPTION = (
    "Accuracy on text minus accuracy on speech over the same items, with a paired bootstrap interval."
)
_KWARGS_DESCRIPTION = """
Args:
    text_predictions (`list[int]`): the reference system's choices on the text version of each item.
    speech_predictions (`list[int]`): the speech system's choices on the spoken version of the same items.
    references (`list[int]`): gold option indices.
    num_samples (`int`, defaults to 2000), seed (`int`, defaults to 0): bootstrap settings.
Returns:
    text_accuracy, speech_accuracy, gap, gap_ci95_low, gap_ci95_high, n
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TextSpeechGap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "text_predictions": datasets.Value("int32"),
                    "speech_predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
        )

    def _compute(self, text_predictions, speech_predictions, references, num_samples=2000, seed=0):
        text = [int(p == r) for p, r in zip(text_predictions, references)]
        speech = [int(p == r) for p, r in zip(speech_predictions, references)]
        gap = paired_difference(text, speech, num_samples=num_samples, seed=seed)
        return {
            "text_accuracy": accuracy_summary(text)["accuracy"],
            "speech_accuracy": accuracy_summary(speech)["accuracy"],
            "gap": gap["value"],
            "gap_ci95_low": gap["ci95"][0],
            "gap_ci95_high": gap["ci95"][1],
            "n": len(references),
        }
