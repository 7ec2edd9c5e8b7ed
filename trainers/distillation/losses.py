"""Cross-modal distillation loss: alpha * divergence(teacher, student) + (1 - alpha) * NLL.

SALAD trains the speech LLM (student, which hears the speech spans) to predict, at every position whose next
token is text, the same distribution over the vocabulary as the original text LLM (teacher, which reads the
transcript). Everything here works on positions that the caller has already gathered and paired: row i of the
student's and of the teacher's hidden states predict the same text token.

`distillation_loss` is the one entry point. It goes from hidden states and LM heads to the loss, by default a few
positions at a time, so the `[N, V]` logits of student and teacher never exist at once (Qwen2.5's vocabulary has
151,936 entries: one fp32 copy of the logits of a 2048-token sequence is 1.2 GB, and a plain implementation keeps
several); `implementation=` picks how (fused, recomputed in backward, or the materialized reference), with the same
value and gradients.

`divergence_per_position` is the building block and can be used on logits directly (e.g. to measure the
paper's forgetting and misalignment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class DistillationLossOutput:
    """The loss to back-propagate and detached sums to log.

    Attributes:
        loss: `(alpha * divergence_sum + (1 - alpha) * nll_sum) / denominator`, a scalar with a grad_fn.
        divergence_sum: the divergence summed over the positions (detached, fp32).
        nll_sum: the student's negative log-likelihood of `target_ids` at temperature 1, summed over the
            positions (detached, fp32); zero when no `target_ids` were given.
        num_tokens: the number of positions in this call (N).
    """

    loss: torch.Tensor
    divergence_sum: torch.Tensor
    nll_sum: torch.Tensor
    num_tokens: int


def _check_options(divergence: str, beta: float, temperature: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}.")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(
            f"The generalized JSD needs 0 < beta < 1, got beta={beta}. At beta=0 or 1 it vanishes identically; "
            "its limits, scaled by 1/beta and 1/(1 - beta), are divergence='forward_kl' (KL(teacher || student)) "
            "and divergence='reverse_kl' (KL(student || teacher)): use those instead."
        )
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-softmax over the vocabulary in at least fp32, with -inf floored to the smallest finite float.

    bf16 has 8 bits of mantissa: a log-softmax computed in it is off by up to ~0.4% of each log-probability,
    enough to make a divergence between nearly equal distributions negative or noisy, hence the upcast first.
    A logit of -inf (a banned token) yields a log-probability of -inf, and the divergences then evaluate
    0 * (-inf - -inf) = NaN, in values and in gradients (logaddexp of two -inf has a NaN gradient even where the
    incoming gradient is zero). Flooring at the smallest finite float leaves every finite log-probability
    untouched and still gives such tokens a probability of exactly 0.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(dtype)
    if temperature != 1.0:  # dividing by 1 would still cost a full [N, V] pass, forward and backward
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1).clamp_min(torch.finfo(dtype).min)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _divergence_from_log_probs(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, divergence: str, beta: float
) -> torch.Tensor:
    if divergence == "forward_kl":
        per_position = _kl(teacher_log_probs, student_log_probs)
    elif divergence == "reverse_kl":
        per_position = _kl(student_log_probs, teacher_log_probs)
    else:
        # log M = log(beta * p_teacher + (1 - beta) * p_student), summed in probability space via logaddexp.
        mixture_log_probs = torch.logaddexp(
            teacher_log_probs + math.log(beta), student_log_probs + math.log1p(-beta)
        )
        per_position = beta * _kl(teacher_log_probs, mixture_log_probs) + (1.0 - beta) * _kl(
            student_log_probs, mixture_log_probs
        )
    # Every divergence here is >= 0; rounding (notably for nearly equal distributions) can dip below.
    return per_position.clamp_min(0.0)


def divergence_per_position(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Divergence between teacher and student next-token distributions at each position.

    Args:
        student_logits: `[N, V]`, any floating dtype (upcast to fp32, or kept in fp64, before the softmax).
        teacher_logits: `[N, V]`, same vocabulary.
        divergence: which divergence, with P_T the teacher's and P_S the student's distribution:

            - `"forward_kl"` (default, the SALAD paper's): KL(P_T || P_S) = sum_v P_T (log P_T - log P_S).
              Mass-covering: the student is penalized wherever the teacher puts mass and it does not.
            - `"reverse_kl"`: KL(P_S || P_T). Mode-seeking.
            - `"jsd"`: the generalized Jensen-Shannon divergence with the mixture taken in probability space,
              M = beta * P_T + (1 - beta) * P_S, and
              JSD_beta = beta * KL(P_T || M) + (1 - beta) * KL(P_S || M).
              beta = 0.5 is the symmetric JSD (bounded by log 2). Both terms vanish as beta goes to 0 or 1;
              JSD_beta / beta tends to forward KL and JSD_beta / (1 - beta) to reverse KL, which is why beta
              must lie strictly between 0 and 1 and the limits are the other two options. TRL 1.16's
              `GKDTrainer.generalized_jsd_loss` uses the same weights (mixture `beta * teacher +
              (1 - beta) * student`, then `beta * KL(teacher || M) + (1 - beta) * KL(student || M)`), so a
              given beta in (0, 1) means the same thing in both; TRL additionally maps beta = 0 and 1 to
              forward and reverse KL, which are separate options here.
        beta: the teacher's weight in the JSD mixture; ignored by the two KLs.
        temperature: divides both logits before the softmax. It shapes the loss only: the result is not
            multiplied by temperature**2 (the Hinton et al. rescaling that keeps gradient magnitudes comparable
            across temperatures when a soft loss is mixed with a hard one). SALAD uses temperature 1, where
            the two conventions agree; at other temperatures, scale alpha or the learning rate explicitly.

    Returns:
        `[N]` fp32 (fp64 for fp64 inputs) divergences, summed over the full vocabulary, never negative.
    """
    _check_options(divergence, beta, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape."
        )
    return _divergence_from_log_probs(
        _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature), divergence, beta
    )


def _loss_sums(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    student_head_weight: torch.Tensor,
    teacher_head_weight: torch.Tensor | None,
    student_head_bias: torch.Tensor | None,
    teacher_head_bias: torch.Tensor | None,
    target_ids: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of divergences, sum of NLLs) over a block of positions, from hidden states and LM heads.

    Without a teacher (`teacher_hidden=None`, allowed only at alpha = 0) the divergence sum is zero."""
    student_logits = F.linear(student_hidden, student_head_weight, student_head_bias)
    student_log_probs = _log_probs(student_logits, temperature)
    if teacher_hidden is None:  # alpha = 0: the NLL alone, no teacher logits to build
        divergence_sum = student_log_probs.new_zeros(())
    else:
        teacher_log_probs = _log_probs(
            F.linear(teacher_hidden, teacher_head_weight, teacher_head_bias), temperature
        )
        divergence_sum = _divergence_from_log_probs(
            student_log_probs, teacher_log_probs, divergence, beta
        ).sum()
    if target_ids is None:
        return divergence_sum, divergence_sum.new_zeros(())
    # The NLL is the usual language-modelling loss, so it is taken at temperature 1 whatever the divergence uses.
    if temperature != 1.0:
        student_log_probs = _log_probs(student_logits, 1.0)
    nll_sum = -student_log_probs.gather(-1, target_ids.unsqueeze(-1)).sum()
    return divergence_sum, nll_sum


def _prepare(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    student_head_weight: torch.Tensor,
    teacher_head_weight: torch.Tensor | None,
    target_ids: torch.Tensor | None,
    teacher_head_bias: torch.Tensor | None,
    alpha: float,
    divergence: str,
    beta: float,
    temperature: float,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Validate the inputs; return the teacher's tensors detached.

    The teacher is a fixed target. Detaching matters when the teacher shares the student's LM head (an LLM that
    is frozen or LoRA-tuned serves as its own teacher with adapters disabled, and a trained, shared head would
    otherwise also receive gradients through the teacher's logits). At alpha = 0 the loss is the NLL alone and
    the teacher may be left out (`teacher_hidden=None`), which spares its forward pass.
    """
    _check_options(divergence, beta, temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    if alpha < 1.0 and target_ids is None:
        raise ValueError(f"alpha={alpha} < 1 mixes in the NLL term, which needs target_ids.")
    has_teacher = teacher_hidden is not None and teacher_head_weight is not None
    if not has_teacher and alpha > 0.0:
        raise ValueError(f"alpha={alpha} > 0 weighs the divergence, which needs teacher_hidden and its head.")
    if student_hidden.dim() != 2 or (has_teacher and teacher_hidden.dim() != 2):
        raise ValueError("student_hidden and teacher_hidden must be [N, H] (gathered supervised positions).")
    if target_ids is not None and target_ids.shape != student_hidden.shape[:1]:
        raise ValueError(
            f"target_ids must be [N] = [{student_hidden.shape[0]}], got {tuple(target_ids.shape)}."
        )
    if not has_teacher:
        return None, None, None
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"student_hidden has {student_hidden.shape[0]} positions but teacher_hidden "
            f"{teacher_hidden.shape[0]}; they must be paired row by row."
        )
    if student_head_weight.shape[0] != teacher_head_weight.shape[0]:
        raise ValueError(
            f"Student and teacher heads have different vocabularies ({student_head_weight.shape[0]} vs "
            f"{teacher_head_weight.shape[0]})."
        )
    return (
        teacher_hidden.detach(),
        teacher_head_weight.detach(),
        None if teacher_head_bias is None else teacher_head_bias.detach(),
    )


def _denominator(
    num_tokens: int, num_items_in_batch: int | torch.Tensor | None, device: torch.device
) -> float | torch.Tensor:
    """What the sums are divided by.

    Dividing each micro-batch's sum by the number of supervised tokens of the whole optimizer step (what the
    Trainer passes as `num_items_in_batch`) makes gradient accumulation equal one big batch; dividing each by
    its own count would weight tokens of short micro-batches more. An empty step gives 0 rather than 0/0.
    """
    denominator = num_tokens if num_items_in_batch is None else num_items_in_batch
    if isinstance(denominator, torch.Tensor):
        return denominator.to(device).clamp_min(1)
    return max(denominator, 1)


def _finish(
    divergence_sum: torch.Tensor,
    nll_sum: torch.Tensor,
    num_tokens: int,
    alpha: float,
    num_items_in_batch: int | torch.Tensor | None,
) -> DistillationLossOutput:
    """Combine the sums and normalize (see `_denominator`)."""
    denominator = _denominator(num_tokens, num_items_in_batch, divergence_sum.device)
    loss = (alpha * divergence_sum + (1.0 - alpha) * nll_sum) / denominator
    return DistillationLossOutput(
        loss=loss, divergence_sum=divergence_sum.detach(), nll_sum=nll_sum.detach(), num_tokens=num_tokens
    )


def _recomputed_loss(inputs: _LossInputs) -> DistillationLossOutput:
    """`implementation="recompute"`: each chunk's logits, log-probabilities and divergence run under activation
    checkpointing. The forward pass keeps only the chunk's scalar sums, and backward recomputes the chunk's logits
    from its hidden states and the heads, one chunk at a time, at the price of computing the logits twice (about
    5/3 of the matmul time of the materialized loss when the head is frozen)."""
    (student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, student_head_bias, teacher_head_bias,
     target_ids, alpha, divergence, beta, temperature, chunk_size, num_items_in_batch) = inputs  # fmt: skip
    num_tokens = student_hidden.shape[0]
    divergence_sum = nll_sum = None
    # range(0, max(N, 1)) runs one (empty) chunk when N == 0, which is what connects the zero loss to the graph.
    for start in range(0, max(num_tokens, 1), chunk_size):
        end = start + chunk_size
        chunk_divergence, chunk_nll = checkpoint(
            _loss_sums,
            student_hidden[start:end],
            None if teacher_hidden is None else teacher_hidden[start:end],
            student_head_weight,
            teacher_head_weight,
            student_head_bias,
            teacher_head_bias,
            None if target_ids is None else target_ids[start:end],
            divergence,
            beta,
            temperature,
            use_reentrant=False,
            preserve_rng_state=False,  # nothing random inside; skips saving RNG states per chunk
        )
        divergence_sum = chunk_divergence if divergence_sum is None else divergence_sum + chunk_divergence
        nll_sum = chunk_nll if nll_sum is None else nll_sum + chunk_nll
    return _finish(divergence_sum, nll_sum, num_tokens, alpha, num_items_in_batch)


class _FusedDistillationLoss(torch.autograd.Function):
    """The loss and its gradients in one pass over the chunks: backward only scales what forward stored.

    Each chunk's logits are built once, its contribution to the loss differentiated at once (by autograd, on the
    chunk alone, so every divergence, temperature, the NLL mix and the clamps behave exactly as in the
    reference), and only the gradients are kept: `[N, H]` for the hidden states and `[V, H]` (+ `[V]`) for a
    trainable head, accumulated over the chunks in fp32. No `[chunk, V]` tensor outlives its chunk.
    """

    @staticmethod
    def forward(ctx, student_hidden, student_head_weight, student_head_bias, teacher_hidden, teacher_head_weight,
                teacher_head_bias, target_ids, options):  # fmt: skip
        alpha, divergence, beta, temperature, chunk_size, denominator = options
        wants = ctx.needs_input_grad[:3]
        accumulate = torch.promote_types(
            student_head_weight.dtype, torch.float32
        )  # fp32, or fp64 in gradcheck
        grad_hidden = torch.zeros_like(student_hidden) if wants[0] else None
        grad_weight = torch.zeros_like(student_head_weight, dtype=accumulate) if wants[1] else None
        grad_bias = None
        if wants[2] and student_head_bias is not None:
            grad_bias = torch.zeros_like(student_head_bias, dtype=accumulate)
        divergence_sum = student_hidden.new_zeros(
            (), dtype=torch.promote_types(student_hidden.dtype, torch.float32)
        )
        nll_sum = divergence_sum.clone()
        for start in range(0, student_hidden.shape[0], chunk_size):
            end = start + chunk_size
            with torch.enable_grad():
                hidden = student_hidden[start:end].detach().requires_grad_(wants[0])
                weight = student_head_weight.detach().requires_grad_(wants[1])
                bias = (
                    None if student_head_bias is None else student_head_bias.detach().requires_grad_(wants[2])
                )
                chunk_divergence, chunk_nll = _loss_sums(
                    hidden,
                    None if teacher_hidden is None else teacher_hidden[start:end],
                    weight,
                    teacher_head_weight,
                    bias,
                    teacher_head_bias,
                    None if target_ids is None else target_ids[start:end],
                    divergence,
                    beta,
                    temperature,
                )
                chunk_loss = (alpha * chunk_divergence + (1.0 - alpha) * chunk_nll) / denominator
                wanted = [(tensor, grad) for tensor, grad in ((hidden, grad_hidden), (weight, grad_weight),
                          (bias, grad_bias)) if grad is not None]  # fmt: skip
                if wanted and chunk_loss.requires_grad:
                    chunk_grads = torch.autograd.grad(chunk_loss, [tensor for tensor, _ in wanted])
                    for (tensor, grad), chunk_grad in zip(wanted, chunk_grads, strict=True):
                        if tensor is hidden:
                            grad[start:end] = chunk_grad
                        else:
                            grad += chunk_grad
            divergence_sum += chunk_divergence.detach()
            nll_sum += chunk_nll.detach()
        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(student_head_weight.dtype),
            None if grad_bias is None else grad_bias.to(student_head_bias.dtype),
        )
        loss = (alpha * divergence_sum + (1.0 - alpha) * nll_sum) / denominator
        ctx.mark_non_differentiable(divergence_sum, nll_sum)
        return loss, divergence_sum, nll_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_divergence, _grad_nll):
        scaled = [None if grad is None else grad * grad_loss.to(grad.dtype) for grad in ctx.grads]
        return (*scaled, None, None, None, None, None)


def _fused_loss(inputs: _LossInputs) -> DistillationLossOutput:
    """`implementation="fused"`: each chunk's gradients are taken during forward, so its logits are computed once
    instead of twice (what Liger's fused linear losses and cut-cross-entropy do, here for every divergence of this
    module). The price is that the gradients of the hidden states (`[N, H]`) and of a trainable head (`[V, H]`,
    fp32) are held from forward to backward, and that backward cannot be differentiated again."""
    (student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, student_head_bias, teacher_head_bias,
     target_ids, alpha, divergence, beta, temperature, chunk_size, num_items_in_batch) = inputs  # fmt: skip
    num_tokens = student_hidden.shape[0]
    denominator = _denominator(num_tokens, num_items_in_batch, student_hidden.device)
    options = (alpha, divergence, beta, temperature, chunk_size, denominator)
    loss, divergence_sum, nll_sum = _FusedDistillationLoss.apply(
        student_hidden, student_head_weight, student_head_bias, teacher_hidden, teacher_head_weight,
        teacher_head_bias, target_ids, options,
    )  # fmt: skip
    return DistillationLossOutput(
        loss=loss, divergence_sum=divergence_sum, nll_sum=nll_sum, num_tokens=num_tokens
    )


def _materialized_loss(inputs: _LossInputs) -> DistillationLossOutput:
    """`implementation="materialized"`: all `[N, V]` logits at once, the plain reference for tests and benchmarks;
    it keeps several `[N, V]` fp32 tensors alive for backward."""
    (student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, student_head_bias, teacher_head_bias,
     target_ids, alpha, divergence, beta, temperature, _, num_items_in_batch) = inputs  # fmt: skip
    divergence_sum, nll_sum = _loss_sums(
        student_hidden,
        teacher_hidden,
        student_head_weight,
        teacher_head_weight,
        student_head_bias,
        teacher_head_bias,
        target_ids,
        divergence,
        beta,
        temperature,
    )
    return _finish(divergence_sum, nll_sum, student_hidden.shape[0], alpha, num_items_in_batch)


class _LossInputs(NamedTuple):
    """The checked inputs of `distillation_loss`, as each implementation reads them."""

    student_hidden: torch.Tensor
    teacher_hidden: torch.Tensor | None
    student_head_weight: torch.Tensor
    teacher_head_weight: torch.Tensor | None
    student_head_bias: torch.Tensor | None
    teacher_head_bias: torch.Tensor | None
    target_ids: torch.Tensor | None
    alpha: float
    divergence: str
    beta: float
    temperature: float
    chunk_size: int
    num_items_in_batch: int | torch.Tensor | None


_IMPLEMENTATIONS = {"fused": _fused_loss, "recompute": _recomputed_loss, "materialized": _materialized_loss}
#: `salad-train --loss_implementation`: the same loss three ways.
LOSS_IMPLEMENTATIONS = tuple(_IMPLEMENTATIONS)


def distillation_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    student_head_weight: torch.Tensor,
    teacher_head_weight: torch.Tensor | None,
    target_ids: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    implementation: str = "fused",
    chunk_size: int = 1024,
    num_items_in_batch: int | torch.Tensor | None = None,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | None = None,
) -> DistillationLossOutput:
    """SALAD's loss, `alpha * divergence(teacher, student) + (1 - alpha) * NLL`, from hidden states and LM heads.

    The three implementations give the same value and gradients (up to float summation order):

    - `"fused"` (the default of `salad-train`): `chunk_size` positions at a time, each chunk's gradients taken
      during forward; its logits are built once and never outlive the chunk.
    - `"recompute"`: `chunk_size` positions at a time under activation checkpointing; backward rebuilds each
      chunk's logits (no stored head gradient).
    - `"materialized"`: all `[N, V]` logits at once, the plain reference (`chunk_size` is not used).

    Peak memory of the chunked ones scales with `chunk_size * V` instead of `N * V`.

    Args:
        student_hidden: `[N, H_s]` final hidden states of the student at the supervised positions (after the
            final norm, i.e. what the LM head reads); gradients flow into them.
        teacher_hidden: `[N, H_t]` the teacher's hidden states at the paired positions; treated as constants.
            None (with `teacher_head_weight=None`) only at alpha = 0: the NLL alone, no teacher needed.
        student_head_weight: `[V, H_s]` the student's LM head (its `lm_head.weight`); trained or frozen.
        teacher_head_weight: `[V, H_t]` the teacher's LM head; may be the same tensor as the student's.
        target_ids: `[N]` the next-token ids, for the NLL term `-log P_S(target)` (temperature 1). Required
            when alpha < 1; when given with alpha = 1 the NLL is still reported in `nll_sum`.
        alpha: weight of the divergence; 1 - alpha weighs the NLL. SALAD uses 1.
        divergence, beta, temperature: see `divergence_per_position`.
        implementation: `"fused"`, `"recompute"` or `"materialized"` (`LOSS_IMPLEMENTATIONS`).
        chunk_size: positions per chunk. The transient memory is a few `chunk_size x V` fp32 tensors
            (a 1024 x 151,936 one is 0.6 GB); lower it for large vocabularies on small devices.
        num_items_in_batch: the number of supervised positions in all micro-batches of the optimizer step
            (the Trainer's `num_items_in_batch`); the loss is the sum divided by it. Defaults to N, the mean
            over this call's positions.
        student_head_bias, teacher_head_bias: `[V]` biases of heads that have one.

    Returns:
        `DistillationLossOutput`. With N = 0 the loss is a zero that is still connected to `student_hidden`
        and the student's head, so backward (and DDP's gradient hooks) run as for any other batch.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {LOSS_IMPLEMENTATIONS}, got {implementation!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    teacher_hidden, teacher_head_weight, teacher_head_bias = _prepare(
        student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, target_ids, teacher_head_bias,
        alpha, divergence, beta, temperature,
    )  # fmt: skip
    inputs = _LossInputs(
        student_hidden, teacher_hidden, student_head_weight, teacher_head_weight, student_head_bias,
        teacher_head_bias, target_ids, alpha, divergence, beta, temperature, chunk_size, num_items_in_batch,
    )  # fmt: skip
    return _IMPLEMENTATIONS[implementation](inputs)


def option_log_probs(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    input_ids: torch.Tensor,
    spans: torch.Tensor,
    head_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each sequence's mean log-probability per token of its scored span, as the eval harness scores an option.

    Args:
        hidden: `[S, L, H]` final hidden states (what the LM head reads).
        head_weight: `[V, H]` the LM head; `head_bias` `[V]` where it has one.
        input_ids: `[S, L]` the sequences, whose span tokens are scored.
        spans: `[S, 2]` each sequence's scored span `(begin, length)`, `begin >= 1`, `length >= 1`: the positions
            `begin - 1 ...` predict the tokens at `begin ...`.

    Returns:
        `[S]` the mean log-probabilities (fp32), with gradients into `hidden` and the head. Only the span positions'
        logits are built, `[sum(lengths), V]`.
    """
    begins, lengths = spans[:, 0], spans[:, 1]
    if bool((begins < 1).any()) or bool((lengths < 1).any()):
        raise ValueError(f"Every span needs begin >= 1 and length >= 1, got {spans.tolist()}.")
    sequence = torch.repeat_interleave(torch.arange(len(spans), device=spans.device), lengths)
    offset = torch.arange(len(sequence), device=spans.device) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    targets = input_ids[sequence, begins[sequence] + offset]
    logits = F.linear(hidden[sequence, begins[sequence] + offset - 1], head_weight, head_bias).float()
    token_log_probs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    sums = torch.zeros(len(spans), dtype=token_log_probs.dtype, device=token_log_probs.device)
    return sums.index_add(0, sequence, token_log_probs) / lengths.to(sums.dtype)


@dataclass
class ChoiceLossOutput:
    """The loss of `choice_distillation_loss` and detached sums to log.

    Attributes:
        loss: `(divergence_sum + text_weight * text_divergence_sum) / denominator`, a scalar with a grad_fn.
        divergence_sum: the KL over each question's options from the teacher to the student hearing the clip,
            summed over the questions (detached).
        text_divergence_sum: the same for the student reading the question's text; None without it.
        teacher_right, student_right: questions whose own answer (option 0) the teacher / the student hearing the
            clip scores highest.
        num_questions: the questions in this call (Q).
    """

    loss: torch.Tensor
    divergence_sum: torch.Tensor
    text_divergence_sum: torch.Tensor | None
    teacher_right: int
    student_right: int
    num_questions: int


def choice_distillation_loss(
    teacher_scores: torch.Tensor,
    student_scores: torch.Tensor,
    text_scores: torch.Tensor | None = None,
    *,
    text_weight: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> ChoiceLossOutput:
    """Distillation over the choice the harness makes: KL(teacher || student) between distributions over options.

    Each question's options (its own answer first, then distractors) are scored by mean log-probability per token
    (`option_log_probs`), by the teacher after the question's text and by the student after its clip; a softmax
    over each question's scores gives the two distributions. What every option shares (that it reads like an
    answer) cancels in that softmax, so only what tells the options apart is distilled: the token-level KL also
    rewards the student for sounding like an answer where it misheard (benchmarks/alignment/README.md, experiments
    23-29).

    Args:
        teacher_scores: `[Q, O]` the teacher's option scores (constants).
        student_scores: `[Q, O]` the student's, after the clip.
        text_scores: `[Q, O]` the student's after the question's text, or None: the term that keeps a trained LLM
            the text LLM it was (with LoRA, the teacher is the same LLM with LoRA off).
        text_weight: the weight of that term.
        num_items_in_batch: the questions of all micro-batches of the optimizer step (the Trainer's); the loss is
            the sum divided by it. Defaults to Q, the mean over this call's questions.
    """
    if teacher_scores.shape != student_scores.shape or teacher_scores.dim() != 2:
        raise ValueError(
            f"teacher_scores and student_scores must both be [questions, options], got {tuple(teacher_scores.shape)} "
            f"and {tuple(student_scores.shape)}."
        )
    if text_scores is not None and text_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"text_scores must be {tuple(teacher_scores.shape)}, got {tuple(text_scores.shape)}."
        )
    teacher = teacher_scores.detach().float().log_softmax(-1)

    def summed_kl(scores: torch.Tensor) -> torch.Tensor:
        return _kl(teacher, scores.float().log_softmax(-1)).sum()

    divergence = summed_kl(student_scores)
    text_divergence = summed_kl(text_scores) if text_scores is not None else None
    total = divergence if text_divergence is None else divergence + text_weight * text_divergence
    denominator = len(teacher_scores) if num_items_in_batch is None else num_items_in_batch
    return ChoiceLossOutput(
        loss=total / denominator,
        divergence_sum=divergence.detach(),
        text_divergence_sum=None if text_divergence is None else text_divergence.detach(),
        teacher_right=int((teacher_scores.argmax(-1) == 0).sum()),
        student_right=int((student_scores.argmax(-1) == 0).sum()),
        num_questions=len(teacher_scores),
    )
