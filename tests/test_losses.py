"""The distillation loss against independent references, and the known ways such losses go wrong.

References are computed in fp64 from probabilities (not log-probabilities) or with torch's own `kl_div` and
`cross_entropy`, so they share no code with `trainers.distillation.losses`.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import OTHER_INSTANCE_ULPS, assert_close_in_dtype

from trainers.distillation.losses import (
    DIVERGENCES,
    distillation_loss,
    divergence_per_position,
)

# The one entry point, by implementation (the names of the three functions it replaced, issue 32).
chunked_distillation_loss = partial(distillation_loss, implementation="recompute")
fused_distillation_loss = partial(distillation_loss, implementation="fused")
materialized_distillation_loss = partial(distillation_loss, implementation="materialized")

N, H, V = 13, 8, 17
# The two chunked implementations (`loss_implementation` recompute / fused), checked against the materialized one.
CHUNKED = pytest.mark.parametrize(
    "loss_fn", [chunked_distillation_loss, fused_distillation_loss], ids=["recompute", "fused"]
)
EVERY = pytest.mark.parametrize(
    "loss_fn",
    [chunked_distillation_loss, fused_distillation_loss, materialized_distillation_loss],
    ids=["recompute", "fused", "materialized"],
)


def make_inputs(n=N, hidden=H, vocab=V, seed=0, dtype=torch.float64, scale=1.0):
    """Paired student/teacher hidden states, separate heads and next-token targets."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    return {
        "student_hidden": randn(n, hidden).requires_grad_(),
        "teacher_hidden": randn(n, hidden),
        "student_head_weight": randn(vocab, hidden).requires_grad_(),
        "teacher_head_weight": randn(vocab, hidden),
        "target_ids": torch.randint(vocab, (n,), generator=generator),
    }


def random_logits(n=N, vocab=V, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, vocab, generator=generator, dtype=torch.float64) * scale,
        torch.randn(n, vocab, generator=generator, dtype=torch.float64) * scale,
    )


def hand_kl(p, q):
    """KL(p || q) per row from probabilities."""
    return (p * (p / q).log()).sum(-1)


def hand_jsd(p_teacher, p_student, beta):
    mixture = beta * p_teacher + (1 - beta) * p_student
    return beta * hand_kl(p_teacher, mixture) + (1 - beta) * hand_kl(p_student, mixture)


def grads(inputs, output, names=("student_hidden", "student_head_weight")):
    return torch.autograd.grad(output.loss, [inputs[name] for name in names])


# --- divergence_per_position -------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identical_distributions_give_zero(divergence, dtype):
    logits = (torch.randn(32, 1000) * 5).to(dtype)
    values = divergence_per_position(logits, logits.clone(), divergence)
    assert values.dtype == torch.float32
    assert (values >= 0).all()
    assert_close_in_dtype(values, torch.zeros(32), ulps=OTHER_INSTANCE_ULPS)


def test_forward_and_reverse_kl_match_torch_kl_div():
    student, teacher = random_logits()
    log_s, log_t = student.log_softmax(-1), teacher.log_softmax(-1)
    # kl_div(input=log q, target=log p, log_target=True) is elementwise p * (log p - log q): KL(p || q).
    forward = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(-1)
    reverse = F.kl_div(log_t, log_s, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(divergence_per_position(student, teacher, "forward_kl"), forward)
    torch.testing.assert_close(divergence_per_position(student, teacher, "reverse_kl"), reverse)
    torch.testing.assert_close(forward, hand_kl(teacher.softmax(-1), student.softmax(-1)))
    assert not torch.allclose(forward, reverse)


def test_default_is_forward_kl():
    student, teacher = random_logits()
    torch.testing.assert_close(
        divergence_per_position(student, teacher), divergence_per_position(student, teacher, "forward_kl")
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.8])
def test_jsd_is_the_probability_space_mixture(beta):
    student, teacher = random_logits()
    p_s, p_t = student.softmax(-1), teacher.softmax(-1)
    ours = divergence_per_position(student, teacher, "jsd", beta=beta)
    torch.testing.assert_close(ours, hand_jsd(p_t, p_s, beta))

    # The known bug: the mixture's log taken as the mix of the logs. It must give a clearly different value.
    log_t, log_s = teacher.log_softmax(-1), student.log_softmax(-1)
    log_mix_wrong = beta * log_t + (1 - beta) * log_s
    in_log_space = beta * (p_t * (log_t - log_mix_wrong)).sum(-1) + (1 - beta) * (
        p_s * (log_s - log_mix_wrong)
    ).sum(-1)
    assert (ours - in_log_space).abs().max() > 1e-2


@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_jsd_beta_is_the_teacher_weight(beta):
    student, teacher = random_logits()
    p_s, p_t = student.softmax(-1), teacher.softmax(-1)
    ours = divergence_per_position(student, teacher, "jsd", beta=beta)
    swapped = hand_jsd(p_t, p_s, 1 - beta)
    assert (ours - swapped).abs().max() > 1e-2
    # Swapping the roles of teacher and student is the same as swapping the weights.
    torch.testing.assert_close(divergence_per_position(teacher, student, "jsd", beta=1 - beta), ours)


def test_symmetric_jsd_at_half_and_bounded_by_log2():
    student, teacher = random_logits(scale=6.0)
    forward = divergence_per_position(student, teacher, "jsd", beta=0.5)
    torch.testing.assert_close(forward, divergence_per_position(teacher, student, "jsd", beta=0.5))
    assert (forward <= math.log(2) + 1e-12).all()


def test_jsd_same_convention_as_trl():
    trl_gkd = pytest.importorskip("trl.experimental.gkd")
    student, teacher = random_logits()
    for beta in (0.2, 0.5, 0.7):
        theirs = trl_gkd.GKDTrainer.generalized_jsd_loss(
            student[None], teacher[None], beta=beta, reduction="sum"
        )
        ours = divergence_per_position(student, teacher, "jsd", beta=beta).sum()
        torch.testing.assert_close(ours, theirs)


def test_temperature_divides_both_logits_without_rescaling():
    student, teacher = random_logits()
    for divergence in DIVERGENCES:
        at_two = divergence_per_position(student, teacher, divergence, temperature=2.0)
        torch.testing.assert_close(at_two, divergence_per_position(student / 2, teacher / 2, divergence))
        assert not torch.allclose(at_two, divergence_per_position(student, teacher, divergence))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_banned_tokens_and_vocab_padding_change_nothing(divergence):
    """Per-position sums over the vocabulary: padding it with impossible tokens leaves the value unchanged
    (a `batchmean` that divides by seq * vocab, or a mean over the vocabulary, would shrink it), and -inf
    logits give neither NaN values nor NaN gradients."""
    student, teacher = random_logits()
    pad = torch.full((N, 40), float("-inf"), dtype=torch.float64)
    student_padded = torch.cat([student, pad], -1).requires_grad_()
    teacher_padded = torch.cat([teacher, pad], -1)
    padded = divergence_per_position(student_padded, teacher_padded, divergence)
    torch.testing.assert_close(padded, divergence_per_position(student, teacher, divergence))
    padded.sum().backward()
    assert torch.isfinite(student_padded.grad).all()
    assert (student_padded.grad[:, V:] == 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bf16_logits_never_give_negative_divergence(divergence):
    teacher = torch.randn(256, 5000) * 4
    # Nearly equal distributions: the true divergence is tiny, so rounding would show up as negative values.
    student = (teacher + 1e-3 * torch.randn_like(teacher)).bfloat16()
    values = divergence_per_position(student, teacher.bfloat16(), divergence, beta=0.3)
    assert torch.isfinite(values).all()
    assert (values >= 0).all()


def test_invalid_options_raise():
    student, teacher = random_logits()
    for beta in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="forward_kl"):
            divergence_per_position(student, teacher, "jsd", beta=beta)
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd"):
        divergence_per_position(student, teacher, "kl")
    with pytest.raises(ValueError, match="temperature"):
        divergence_per_position(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        divergence_per_position(student, teacher[:, :-1])
    inputs = make_inputs()
    with pytest.raises(ValueError, match="target_ids"):
        chunked_distillation_loss(**{**inputs, "target_ids": None}, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        chunked_distillation_loss(**inputs, alpha=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_distillation_loss(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match="paired"):
        chunked_distillation_loss(**{**inputs, "teacher_hidden": inputs["teacher_hidden"][:-1]})


# --- the loss from hidden states ---------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_loss_is_the_mean_per_token_divergence(divergence):
    inputs = make_inputs()
    out = materialized_distillation_loss(**inputs, divergence=divergence, beta=0.3)
    p_s = (inputs["student_hidden"] @ inputs["student_head_weight"].T).softmax(-1)
    p_t = (inputs["teacher_hidden"] @ inputs["teacher_head_weight"].T).softmax(-1)
    expected = {
        "forward_kl": hand_kl(p_t, p_s),
        "reverse_kl": hand_kl(p_s, p_t),
        "jsd": hand_jsd(p_t, p_s, 0.3),
    }[divergence]
    torch.testing.assert_close(out.loss, expected.sum() / N)
    torch.testing.assert_close(out.divergence_sum, expected.sum())
    assert out.num_tokens == N
    assert out.divergence_sum.grad_fn is None


def test_alpha_zero_is_cross_entropy():
    inputs = make_inputs()
    out = chunked_distillation_loss(**inputs, alpha=0.0, chunk_size=4)
    logits = inputs["student_hidden"] @ inputs["student_head_weight"].T
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, inputs["target_ids"], reduction="sum") / N)


@EVERY
def test_alpha_zero_needs_no_teacher(loss_fn):
    """An ASR stage (alpha = 0) leaves the teacher out: same loss and gradients as with one, no divergence."""
    inputs = make_inputs()
    with_teacher = loss_fn(**inputs, alpha=0.0)
    (expected,) = torch.autograd.grad(with_teacher.loss, inputs["student_hidden"])
    alone = loss_fn(**{**inputs, "teacher_hidden": None, "teacher_head_weight": None}, alpha=0.0)
    (gradient,) = torch.autograd.grad(alone.loss, inputs["student_hidden"])
    torch.testing.assert_close(alone.loss, with_teacher.loss)
    torch.testing.assert_close(gradient, expected)
    assert float(alone.divergence_sum) == 0.0
    with pytest.raises(ValueError, match="needs teacher_hidden"):
        loss_fn(**{**inputs, "teacher_hidden": None, "teacher_head_weight": None}, alpha=0.5)


def test_alpha_mixes_divergence_and_nll():
    inputs = make_inputs()
    out = chunked_distillation_loss(**inputs, alpha=0.25, chunk_size=5)
    torch.testing.assert_close(out.loss, (0.25 * out.divergence_sum + 0.75 * out.nll_sum) / N)


def test_temperature_changes_divergence_but_not_nll():
    inputs = make_inputs()
    at_one = materialized_distillation_loss(**inputs, alpha=0.5)
    at_three = materialized_distillation_loss(**inputs, alpha=0.5, temperature=3.0)
    torch.testing.assert_close(at_three.nll_sum, at_one.nll_sum)
    assert not torch.allclose(at_three.divergence_sum, at_one.divergence_sum)
    logits = inputs["student_hidden"] @ inputs["student_head_weight"].T
    torch.testing.assert_close(
        at_three.nll_sum, F.cross_entropy(logits, inputs["target_ids"], reduction="sum")
    )


@CHUNKED
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, N, N + 5])
@pytest.mark.parametrize("trainable_head", [True, False], ids=["trainable-head", "frozen-head"])
def test_chunked_equals_materialized(loss_fn, divergence, chunk_size, trainable_head):
    """fp32 values and gradients within rtol 1e-5 / atol 1e-6 of the materialized loss (summation order only)."""
    inputs = make_inputs(dtype=torch.float32)
    inputs["student_head_bias"] = torch.randn(V, requires_grad=True)
    inputs["teacher_head_bias"] = torch.randn(V)
    names = ("student_hidden", "student_head_weight", "student_head_bias")
    if not trainable_head:
        for name in names[1:]:
            inputs[name].requires_grad_(False)
        names = names[:1]
    options = {"alpha": 0.7, "divergence": divergence, "beta": 0.4, "temperature": 1.5}
    reference = materialized_distillation_loss(**inputs, **options)
    chunked = loss_fn(**inputs, **options, chunk_size=chunk_size)
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    for field in ("loss", "divergence_sum", "nll_sum"):
        torch.testing.assert_close(getattr(chunked, field), getattr(reference, field), **tolerance)
    for got, expected in zip(grads(inputs, chunked, names), grads(inputs, reference, names), strict=True):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fused_gradients_pass_gradcheck(divergence):
    """Numerical and analytical gradients agree in fp64, hidden states, head weight and bias, across chunks."""
    inputs = make_inputs(n=5, hidden=3, vocab=7)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def loss(hidden, weight, head_bias):
        return fused_distillation_loss(
            hidden, inputs["teacher_hidden"], weight, inputs["teacher_head_weight"], inputs["target_ids"],
            alpha=0.7, divergence=divergence, beta=0.3, temperature=1.5, chunk_size=2, student_head_bias=head_bias,
        ).loss  # fmt: skip

    assert torch.autograd.gradcheck(loss, (inputs["student_hidden"], inputs["student_head_weight"], bias))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_fused_builds_each_chunks_logits_once(monkeypatch, divergence):
    """The point of the fused loss: recompute builds every chunk's student and teacher logits twice (forward,
    then again in backward), fused once."""
    import trainers.distillation.losses as losses

    calls = []
    linear = F.linear

    def counting_linear(*args, **kwargs):
        calls.append(args[0].shape[0])
        return linear(*args, **kwargs)

    monkeypatch.setattr(losses.F, "linear", counting_linear)
    for loss_fn, builds in ((chunked_distillation_loss, 2), (fused_distillation_loss, 1)):
        inputs = make_inputs()
        calls.clear()
        loss_fn(**inputs, divergence=divergence, alpha=0.5, chunk_size=4).loss.backward()
        assert sorted(calls) == sorted([4, 4, 4, 1] * 2 * builds), loss_fn.__name__  # 13 = 4 + 4 + 4 + 1


@EVERY
def test_gradient_accumulation_equals_one_big_batch(loss_fn):
    inputs = make_inputs(n=16)
    whole = loss_fn(**inputs, alpha=0.6)
    whole_grads = grads(inputs, whole)

    sizes = (3, 13)  # unequal micro-batches: the case a per-micro-batch mean gets wrong
    accumulated_loss, accumulated_grads, per_batch_mean = 0.0, None, 0.0
    for part in zip(
        *(inputs[key].split(sizes) for key in ("student_hidden", "teacher_hidden", "target_ids"))
    ):
        micro = {**inputs, "student_hidden": part[0], "teacher_hidden": part[1], "target_ids": part[2]}
        out = loss_fn(**micro, alpha=0.6, num_items_in_batch=torch.tensor(sum(sizes)))
        accumulated_loss = accumulated_loss + out.loss
        step_grads = grads(inputs, out)
        accumulated_grads = (
            step_grads
            if accumulated_grads is None
            else [a + b for a, b in zip(accumulated_grads, step_grads, strict=True)]
        )
        per_batch_mean = per_batch_mean + loss_fn(**micro, alpha=0.6).loss.detach() / len(sizes)

    torch.testing.assert_close(accumulated_loss, whole.loss)
    for got, expected in zip(accumulated_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert not torch.allclose(per_batch_mean, whole.loss.detach())


@EVERY
def test_empty_batch_gives_a_connected_zero(loss_fn):
    inputs = make_inputs(n=0)
    out = loss_fn(**inputs)
    assert out.num_tokens == 0
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert inputs["student_hidden"].grad.shape == (0, H)
    assert (inputs["student_head_weight"].grad == 0).all()
    with_count = loss_fn(**make_inputs(n=0), num_items_in_batch=torch.tensor(0))
    assert with_count.loss.item() == 0.0


@CHUNKED
def test_teacher_is_detached_even_with_a_shared_head(loss_fn):
    inputs = make_inputs()
    shared = {**inputs, "teacher_head_weight": inputs["student_head_weight"]}
    separate = {**inputs, "teacher_head_weight": inputs["student_head_weight"].detach().clone()}
    for got, expected in zip(
        grads(inputs, loss_fn(**shared, chunk_size=4)),
        grads(inputs, loss_fn(**separate, chunk_size=4)),
        strict=True,
    ):
        torch.testing.assert_close(got, expected)


@CHUNKED
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_bf16_hidden_states(loss_fn, divergence):
    inputs = make_inputs(n=64, hidden=32, vocab=500, dtype=torch.bfloat16, scale=0.5)
    # A student that nearly matches the teacher, where bf16 rounding is largest relative to the divergence.
    inputs["teacher_hidden"] = (inputs["student_hidden"].detach().float() + 1e-3).bfloat16()
    inputs["teacher_head_weight"] = inputs["student_head_weight"].detach()
    out = loss_fn(**inputs, divergence=divergence, alpha=0.9, chunk_size=16)
    assert out.loss.dtype == torch.float32
    assert out.divergence_sum >= 0 and torch.isfinite(out.loss)
    reference = materialized_distillation_loss(**inputs, divergence=divergence, alpha=0.9)
    torch.testing.assert_close(out.loss, reference.loss)
    out.loss.backward()
    assert inputs["student_hidden"].grad.dtype == torch.bfloat16
    assert torch.isfinite(inputs["student_hidden"].grad.float()).all()


def test_chunked_saves_no_full_logits_for_backward():
    """What autograd keeps between forward and backward: the materialized loss keeps [N, V] tensors, the
    chunked one only its inputs (each chunk's logits are recomputed in backward)."""
    inputs = make_inputs(n=64, hidden=8, vocab=50)

    def largest_saved(loss_fn, **kwargs):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss_fn(**inputs, alpha=0.5, **kwargs)
        return max(sizes)

    assert largest_saved(materialized_distillation_loss) >= 64 * 50
    assert largest_saved(chunked_distillation_loss, chunk_size=4) == 50 * 8  # the head weight
