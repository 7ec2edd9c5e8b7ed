"""Forgetting F and misalignment M: the two causes of the text-speech gap, as next-token divergences.

    F (forgetting)   = mean_i KL( Q(. | w<=i) || P(. | w<=i) )   base LLM vs SALAD model, both on text
    M (misalignment) = mean_i KL( P(. | w<=i) || P(. | c<=i) )   SALAD model on text vs on speech

(The paper sums over positions; we report per-token means, comparable across corpora of different sizes.)
They are built from the training pairs (`SaladDistillationCollator`) and the distillation divergence, and Stage
II's active selection scores clusters by M, so they live with the trainer; `eval.gap` adds the statistics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from .data import SaladDistillationCollator
from .losses import divergence_per_position


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
    """F and M per token (overall and per `row["domain"]`) over rows in the `trainers.distillation.data` schema.

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
        batch = {k: v.to(model.device) for k, v in collator(chunk).items() if isinstance(v, torch.Tensor)}
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
            forgetting = forgetting_per_position(text_logits, base_logits)
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


def forgetting_per_position(text_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(Q || P) at each position, the base LLM's distribution Q against the speech model's P on the same text,
    over the ids both heads have: a speech model adds audio tokens (SALAD's `<|audio|>` row), which text never
    predicts, and heads may be padded to other widths."""
    shared = min(text_logits.shape[-1], base_logits.shape[-1])
    return divergence_per_position(text_logits[:, :shared], base_logits[:, :shared])


def _base_hidden_states(model, base_model, batch) -> tuple[torch.Tensor, torch.nn.Module]:
    inputs = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
    if base_model is not None:
        return base_model.get_decoder()(**inputs).last_hidden_state, base_model.get_output_embeddings()
    with model.lora_disabled():
        hidden = model(**inputs, return_last_hidden_state=True).last_hidden_state
    return hidden, model.get_output_embeddings()
