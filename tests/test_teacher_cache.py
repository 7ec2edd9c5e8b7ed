"""`TeacherCache`: the frozen teacher's states at each row's supervised positions, computed once per row."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    OTHER_INSTANCE_ULPS,
    OTHER_PATH_ULPS,
    assert_close_in_dtype,
    build_tiny,
    decoder_tiny,
    float_tolerance,
)
from test_trainer import config, logged, speech_rows, train_on_speech_rows

from trainers.distillation.data import pad_sequences
from trainers.distillation.teacher_cache import TeacherCache

EMBEDDINGS = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))


def context_sums(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A stand-in teacher: each position's state depends on the real tokens up to it, not on the padding."""
    return (EMBEDDINGS[input_ids] * attention_mask[..., None]).cumsum(1)


def batch(rows: list[list[int]], positions: list[list[int]], side: str):
    ids, mask, offsets = pad_sequences(rows, pad_id=0, side=side)
    index = torch.tensor(
        [row * ids.shape[1] + offsets[row] + p for row, ps in enumerate(positions) for p in ps]
    )
    return ids, mask, index


def test_the_cache_gives_the_batchs_states_and_runs_the_teacher_only_on_rows_never_seen():
    cache, asked = TeacherCache(), []

    def teacher(ids, mask):
        def hidden(rows):
            asked.append(rows.tolist())
            return context_sums(ids[rows], mask[rows])

        return hidden

    first = ([[5, 6, 7, 8], [9, 10]], [[1, 2, 3], [1]])
    ids, mask, index = batch(*first, side="right")
    states = cache.states(teacher(ids, mask), ids, mask, index)
    assert_close_in_dtype(states, context_sums(ids, mask).flatten(0, 1)[index], ulps=OTHER_INSTANCE_ULPS)
    # the same rows left-padded to another width, beside a new row and a seen row read at other positions
    second = ([[1, 2, 3, 4, 11, 12], [9, 10], [5, 6, 7, 8], [5, 6, 7, 8]], [[5], [1], [1, 2, 3], [2]])
    ids, mask, index = batch(*second, side="left")
    states = cache.states(teacher(ids, mask), ids, mask, index)
    # the cached rows were summed in another batch's layout, which the CPU may vectorize differently
    assert_close_in_dtype(states, context_sums(ids, mask).flatten(0, 1)[index], ulps=OTHER_INSTANCE_ULPS)
    assert asked == [[0, 1], [0, 3]]
    assert (cache.hits, cache.misses) == (2, 4)


@pytest.mark.parametrize(
    ("build", "train_llm"), [(decoder_tiny, "frozen"), (lambda: build_tiny("whisper", "mlp"), "lora")]
)
def test_training_on_cached_teacher_states_trains_as_training_without_them(tmp_path, build, train_llm):
    """Three epochs of the same rows: after the first, every row's teacher states come from the cache, and the
    losses match a run that runs the teacher every step (to the float rounding of rows computed in other batches),
    also where LoRA trains the LLM that the shared teacher reads with LoRA off."""

    def run(cache_teacher_states: bool):
        model, processor = build()
        args = config(
            tmp_path / str(cache_teacher_states), max_steps=9, train_llm=train_llm,
            cache_teacher_states=cache_teacher_states,
        )  # fmt: skip
        return train_on_speech_rows(model, processor, args)

    cached, cached_losses = run(True)
    uncached, losses = run(False)
    assert uncached.teacher_cache is None
    assert cached_losses == pytest.approx(losses, rel=float_tolerance(torch.float32, OTHER_PATH_ULPS)["rtol"])
    # a row's all-text version depends on its text and the seed alone: rows of the same text share an entry
    rows, distinct = 9 * 3, len({row["text"] for row in speech_rows()})
    assert (cached.teacher_cache.hits, cached.teacher_cache.misses) == (rows - distinct, distinct)
    rates = logged(cached, "teacher_cache_hit_rate")
    assert rates[0] == 0.0 and rates[-1] == pytest.approx((rows - distinct) / rows, abs=1e-3)
