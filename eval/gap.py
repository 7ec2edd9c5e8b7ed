"""The text-speech understanding gap, its confidence intervals, and its two causes: forgetting and misalignment.

    gap(task)        = accuracy(base LLM, text) - accuracy(SALAD model, speech)
    retention gap    = accuracy(base LLM, text) - accuracy(SALAD model, text)
    F (forgetting)   = mean_i KL( Q(. | w<=i) || P(. | w<=i) )   base LLM vs SALAD model, both on text
    M (misalignment) = mean_i KL( P(. | w<=i) || P(. | c<=i) )   SALAD model on text vs on speech

(METHOD.md sums over positions; we report per-token means, comparable across corpora of different sizes.)
Intervals are percentile bootstraps over items; gaps use paired resampling (the same items for both systems),
which is what makes small offline sets informative.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from trainers.data import SaladDistillationCollator
from trainers.losses import divergence_per_position


def bootstrap_interval(
    values: Sequence[float], num_samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. 0/1 correctness per item)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(num_samples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


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
    **bootstrap,
) -> dict:
    """Accuracy of each system, the gap and retention gap, prior agreement: overall and per domain.

    `correct[system]` and `choices[system]` hold one entry per item, in the same item order for every system.
    """

    def report(indices: np.ndarray) -> dict:
        subset = {name: np.asarray(values)[indices] for name, values in correct.items()}
        out = {"systems": {name: accuracy_summary(values, **bootstrap) for name, values in subset.items()}}
        if reference in subset and speech in subset:
            out["gap"] = paired_difference(subset[reference], subset[speech], **bootstrap)
        if reference in subset and retention in subset:
            out["retention_gap"] = paired_difference(subset[reference], subset[retention], **bootstrap)
        if speech in choices and prior in choices:
            out["speech_prior_agreement"] = agreement(
                np.asarray(choices[speech])[indices], np.asarray(choices[prior])[indices]
            )
        return out

    domains = np.asarray(domains)
    result = report(np.arange(domains.size))
    result["domains"] = {domain: report(np.flatnonzero(domains == domain)) for domain in sorted(set(domains))}
    return result


@torch.no_grad()
def forgetting_and_misalignment(
    model,
    processor,
    rows: Sequence[dict],
    base_model=None,
    batch_size: int = 4,
    continuation: str = "{transcript}",
    with_forgetting: bool = True,
) -> dict:
    """F and M per token (overall and per `row["domain"]`) over rows in the `trainers.data` schema.

    `base_model` is the original text LLM Q; None means the SALAD model's own LLM with LoRA switched off
    (for a frozen LLM, F is then exactly 0); `with_forgetting=False` skips that base-model pass (F is then
    reported as NaN) for callers that only need M, such as Stage II probing. M compares the SALAD model on the all-text version with itself
    on the spoken version at every position whose next token is text (the distillation pairs).
    """
    collator = SaladDistillationCollator(processor, continuation=continuation, max_bad_row_fraction=0.0)
    sums = defaultdict(lambda: np.zeros(3))  # domain -> [F sum, M sum, tokens]
    head = model.get_output_embeddings()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(model.device) for k, v in collator(chunk).items()}
        text_hidden = model(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            return_last_hidden_state=True,
        ).last_hidden_state
        speech_hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            input_features=batch.get("input_features"), input_features_mask=batch.get("input_features_mask"),
            return_last_hidden_state=True,
        ).last_hidden_state  # fmt: skip
        text_logits = head(text_hidden.flatten(0, 1)[batch["teacher_index"]])
        speech_logits = head(speech_hidden.flatten(0, 1)[batch["student_index"]])
        if with_forgetting:
            base_hidden, base_head = _base_hidden_states(model, base_model, batch)
            base_logits = base_head(base_hidden.flatten(0, 1)[batch["teacher_index"]])
            forgetting = divergence_per_position(text_logits, base_logits)  # KL(Q || P) on text
        else:
            forgetting = torch.full_like(text_logits[:, 0], float("nan"))
        misalignment = divergence_per_position(speech_logits, text_logits)  # KL(P_text || P_speech)
        row_of_pair = batch["student_index"] // batch["input_ids"].shape[1]
        for pair, row in enumerate(row_of_pair.tolist()):
            domain = chunk[row].get("domain", "all")
            sums[domain] += [forgetting[pair].item(), misalignment[pair].item(), 1]
    total = sum(sums.values())
    per_domain = {
        d: {"forgetting": s[0] / s[2], "misalignment": s[1] / s[2], "tokens": int(s[2])}
        for d, s in sums.items()
    }
    return {
        "forgetting": total[0] / total[2],
        "misalignment": total[1] / total[2],
        "tokens": int(total[2]),
        "domains": dict(sorted(per_domain.items())),
    }


def _base_hidden_states(model, base_model, batch) -> tuple[torch.Tensor, torch.nn.Module]:
    inputs = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
    if base_model is not None:
        return base_model.get_decoder()(**inputs).last_hidden_state, base_model.get_output_embeddings()
    from trainers.trainer import lora_disabled

    with lora_disabled(model):
        hidden = model(**inputs, return_last_hidden_state=True).last_hidden_state
    return hidden, model.get_output_embeddings()
