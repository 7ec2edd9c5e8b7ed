"""Word timestamps from what the engines report, shared by the engine backends.

Engines place their own tokens or phonemes in time; these helpers turn that into one (start, end) per
whitespace-separated word of the text. A word the engine says nothing for (a lone dash) gets a zero-length
span where the previous word ends.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of `text`."""
    return [match.span() for match in re.finditer(r"\S+", text)]


def _word_index(char_index: int, spans: list[tuple[int, int]]) -> int:
    """The word containing `char_index`, or the next one when it falls on whitespace."""
    position = bisect.bisect_right([start for start, _ in spans], char_index) - 1
    if position < 0:
        return 0
    if char_index >= spans[position][1]:
        return min(position + 1, len(spans) - 1)
    return position


def _char_offsets(text: str, pieces: Iterable[str]) -> list[int]:
    """Where each engine token (a piece of the text, in order) starts in `text`.

    Engines split and normalize words their own way ("1234", "U.S.A.", "world" + ","), so their tokens are
    located in the text left to right; a piece not found verbatim is put where the search stands.
    """
    offsets, cursor = [], 0
    for piece in pieces:
        found = text.find(piece, cursor) if piece else -1
        if found >= 0:
            cursor = found
        offsets.append(cursor)
        if found >= 0:
            cursor += len(piece)
    return offsets


def _times_per_word(
    text: str, tokens: Sequence[tuple[str, float | None, float | None]]
) -> tuple[list[float | None], list[float | None]]:
    """Per word of `text`, the earliest start and latest end of the engine tokens `(piece, start, end)` that
    fall inside it (None for a word without timed tokens); the pieces are parts of the text, in order."""
    offsets = _char_offsets(text, [piece for piece, _, _ in tokens])
    marks = [(offset, start, end) for offset, (_, start, end) in zip(offsets, tokens) if start is not None]
    spans = _word_spans(text)
    starts: list[float | None] = [None] * len(spans)
    ends: list[float | None] = [None] * len(spans)
    for char_index, start, end in marks:
        word = _word_index(char_index, spans)
        starts[word] = start if starts[word] is None else min(starts[word], start)
        ends[word] = end if ends[word] is None else max(ends[word], end)
    return starts, ends


def _consistent_times(
    starts: Sequence[float | None], ends: Sequence[float | None], duration: float
) -> tuple[list[float], list[float]]:
    """Fill words without times with a zero-length span at the previous word's end, and make the times
    non-decreasing, each end at or after its start, all within the audio."""
    filled_starts, filled_ends, previous_end, previous_start = [], [], 0.0, 0.0
    for start, end in zip(starts, ends):
        if start is None:
            start, end = previous_end, previous_end
        start = min(max(start, previous_start), duration)
        end = min(max(end if end is not None else start, start), duration)
        filled_starts.append(round(float(start), 4))
        filled_ends.append(round(float(end), 4))
        previous_start, previous_end = start, max(previous_end, end)
    return filled_starts, filled_ends
