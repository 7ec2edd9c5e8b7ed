"""The frozen teacher's final hidden states at each row's supervised positions, computed once and kept.

SALAD's teacher Q is the original text LLM and never trains: in `teacher_mode="shared"` it is the student's own LLM
with LoRA switched off (the base weights stay frozen), in `"separate"` a frozen copy. What it computes on a row's
all-text version depends on that row's token ids alone, and the collator draws a row's format and spans from the row
and the seed only, so every epoch after the first hands it the same all-text rows. `TeacherCache` keys each row by
its ids and its supervised positions, runs the teacher on the rows never seen, and keeps only the states the loss
reads (the loss projects them through the teacher's head itself, as it does uncached). A cached step then runs the
student alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


def row_key(input_ids: torch.Tensor, positions: torch.Tensor) -> str:
    """A hash of one all-text row (its ids without padding) and of the positions read from it, counted from its
    first real token: the same row padded on either side, to any width, gives the same key."""
    digest = hashlib.sha256(input_ids.detach().cpu().long().contiguous().numpy().tobytes())
    digest.update(b"|")
    digest.update(positions.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TeacherCache:
    """Each row's teacher states at its supervised positions, in memory: 4 bytes per hidden unit per supervised
    token (2.3 KB with SmolLM2-135M; a million supervised tokens take 2.3 GB, so `cache_teacher_states` is off by
    default). The states are kept on the CPU, whatever device trains."""

    def __init__(self):
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def states(
        self,
        teacher_hidden_states: Callable[[torch.Tensor], torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """The teacher's states at `index` (positions of the flattened `[batch, seq]` input, as the collator's
        `teacher_index`), `[len(index), hidden]`: what `teacher_hidden_states(rows).flatten(0, 1)[index]` gives on
        the whole batch, with `teacher_hidden_states` called on the batch's rows never seen (`rows`, a tensor of
        row numbers) and given their `[len(rows), seq, hidden]` states."""
        width = input_ids.shape[1]
        row_of, column = index // width, index % width
        batch_rows = torch.arange(input_ids.shape[0], device=index.device)
        picks = [(row_of == row).nonzero(as_tuple=True)[0] for row in batch_rows]
        real = attention_mask.bool()
        starts = real.long().argmax(-1)  # the first real token: left padding shifts positions
        keys = [
            row_key(input_ids[row][real[row]], column[pick] - starts[row])
            for row, pick in zip(batch_rows, picks)
        ]
        rows = [self.memory.get(key) for key in keys]
        missing = [row for row, states in enumerate(rows) if states is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        if missing:
            hidden = teacher_hidden_states(torch.tensor(missing, device=input_ids.device))
            for k, row in enumerate(missing):
                rows[row] = hidden[k, column[picks[row]]].detach().cpu().clone()
                self.memory[keys[row]] = rows[row]
        states = torch.empty(len(index), rows[0].shape[-1], dtype=rows[0].dtype, device=input_ids.device)
        for pick, row_states in zip(picks, rows):
            states[pick] = row_states.to(states.device)
        return states
