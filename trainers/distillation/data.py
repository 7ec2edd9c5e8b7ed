"""Training data for cross-modal distillation: interleaved text/speech examples and their collator.

A training example is a list of segments. The student sees text segments as tokens and speech segments as
audio (`<|audio|>` placeholders filled by the adapter); the teacher sees every segment as text. The
distillation loss compares the two at every position whose next token is text, so the collator emits, next
to both token sequences, the pairs of positions (student, teacher) that predict the same text token.

Rows come from `datasets` (map-style or streaming) and are turned into examples on the fly by the collator,
so corpora that do not fit on disk stream through. Row schema (columns):

- `text` (str): the transcript of `audio`, or the text of a text-only row.
- `audio` (optional): a file path, raw file bytes, `{"array", "sampling_rate"}` or `{"path"}`; absent/None
  for text-only rows. Decoded with soundfile (the `datasets` Audio feature needs torchcodec, which is not
  always importable).
- `words`, `word_starts`, `word_ends` (optional): word-level alignment in seconds (forced alignment, or
  `word_timestamps_with_asr`). With them speech is interleaved with text in spans cut on word boundaries;
  without them the whole utterance is speech, followed by a text continuation.
- `prompt`, `continuation` (optional): a row's own text before its clip (read by both models, not supervised;
  one that ends with whitespace is followed by the clip directly) and its own filled-in continuation in place
  of the run's template (a spoken question and its answer, for instance). A row with its own continuation is
  always spoken whole. A continuation that starts with whitespace follows the clip as written; any other
  follows it after a space.

A row whose audio cannot be decoded, or whose alignment is inconsistent, is skipped, counted and reported
in `collator.stats` and in each batch (`rows_in_batch`, `bad_row_reasons`, which the trainer adds up and logs
in every dataloader setting); past `max_bad_row_fraction` of the rows seen the run stops with an error.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import concatenate_datasets, interleave_datasets, load_dataset

from modeling_salad import InvalidAudioError, SaladProcessor, load_audio
from trainers.files import write_atomic

from .config import SaladDataArguments, SaladDistillationConfig

if TYPE_CHECKING:  # the TTS engines are imported only where speech is made
    from trainers.tts import Synthesis


@dataclass
class Segment:
    """A piece of an example: text for both models, or speech (with its transcript) for the student."""

    kind: str  # "text" or "speech"
    text: str
    audio: np.ndarray | None = None
    # (start, end) seconds of each word of `text` within `audio`, when the row was word-aligned
    word_times: list[tuple[float, float]] | None = None
    separator: str = " "  # written before the segment when it is not the first (chat templates: "")
    supervised: bool = True  # a text segment whose tokens the loss predicts (a chat template's markup: False)


@dataclass
class EncodedExample:
    student_ids: list[int]
    teacher_ids: list[int]
    clips: list[np.ndarray]
    student_positions: list[int]  # position i predicts the token at i + 1 ...
    teacher_positions: list[int]  # ... and so does the paired teacher position
    target_ids: list[int]


class BadRowError(ValueError):
    """A dataset row that cannot become an example (undecodable audio, inconsistent alignment...)."""


def plan_interleaving(
    num_words: int,
    rng: random.Random,
    text_span: tuple[int, int] = (10, 30),
    speech_span: tuple[int, int] = (5, 15),
) -> list[tuple[str, int, int]]:
    """Alternate text and speech spans over `num_words` words: `[(kind, first_word, end_word), ...]`.

    Span lengths are drawn uniformly from the inclusive ranges; the first span's kind is random. The last
    span is whatever is left, so lengths may fall below the range there.
    """
    plan, start = [], 0
    kind = rng.choice(["text", "speech"])
    while start < num_words:
        low, high = text_span if kind == "text" else speech_span
        end = min(num_words, start + rng.randint(low, high))
        plan.append((kind, start, end))
        start, kind = end, ("speech" if kind == "text" else "text")
    return plan


def checked_word_times(row: dict, duration: float) -> tuple[list[str], list[float], list[float]]:
    """A row's `words`, `word_starts` and `word_ends`, or `BadRowError` saying what is wrong with them.

    Timestamps must be finite numbers of seconds, one start and one end per word, starts non-decreasing, each
    end at or after its start, and none past the end of the audio (with 10 ms of rounding slack).
    """
    words, starts, ends = row.get("words"), row.get("word_starts"), row.get("word_ends")
    if not isinstance(words, list) or not isinstance(starts, list) or not isinstance(ends, list):
        raise BadRowError("word timestamps: words, word_starts and word_ends must all be lists.")
    if not words or not len(words) == len(starts) == len(ends):
        raise BadRowError(
            f"word timestamps: words/word_starts/word_ends must be non-empty and of equal length, got "
            f"{len(words)}/{len(starts)}/{len(ends)}."
        )
    times = [*starts, *ends]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        raise BadRowError("word timestamps: every start and end must be a finite number of seconds.")
    if any(b < a for a, b in zip(starts, starts[1:])) or any(end < start for start, end in zip(starts, ends)):
        raise BadRowError("word timestamps: starts must not decrease and no word may end before it starts.")
    if min(starts) < 0 or max(ends) > duration + 0.01:
        raise BadRowError(f"word timestamps: they run outside the audio's 0-{duration:.2f} s.")
    return words, [float(t) for t in starts], [float(t) for t in ends]


def interleaved_segments(
    words: list[str],
    word_starts: list[float],
    word_ends: list[float],
    audio: np.ndarray,
    sampling_rate: int,
    rng: random.Random,
    text_span: tuple[int, int] = (10, 30),
    speech_span: tuple[int, int] = (5, 15),
) -> list[Segment]:
    """Cut an aligned utterance into alternating text and speech segments on word boundaries.

    A speech span's audio runs from its first word's start to the next word's start (or the end of the
    audio), so no sound between words is lost.
    """
    words, word_starts, word_ends = checked_word_times(
        {"words": words, "word_starts": word_starts, "word_ends": word_ends}, audio.size / sampling_rate
    )
    segments = []
    for kind, first, end in plan_interleaving(len(words), rng, text_span, speech_span):
        text = " ".join(words[first:end])
        if kind == "text":
            segments.append(Segment("text", text))
            continue
        start_sample = int(word_starts[first] * sampling_rate)
        end_sample = int(word_starts[end] * sampling_rate) if end < len(words) else audio.size
        offset = start_sample / sampling_rate
        times = [(word_starts[i] - offset, word_ends[i] - offset) for i in range(first, end)]
        segments.append(Segment("speech", text, audio[start_sample:end_sample], times))
    return segments


def chat_segments(
    transcript: str,
    audio: np.ndarray,
    answer: str,
    instruction: str | None,
    processor: SaladProcessor,
    word_times: list[tuple[float, float]] | None = None,
    prompt: str | None = None,
) -> list[Segment]:
    """The whole utterance as one chat exchange in the LLM's own template: the user turn holds `prompt` (written
    right before the clip, so end it with a space or a newline), the clip (then `instruction`, as the
    speech-to-text pipeline writes a prompt after the audio), the assistant turn `answer` (the filled-in
    continuation), ended by the template's end-of-turn markup.

    Only the assistant's words and its end of turn are supervised, so the model learns to answer what it heard
    and then to stop. The teacher reads the same chat with the transcript in place of the audio.
    """
    user = [{"type": "text", "text": prompt}] if prompt else []
    user.append({"type": "audio", "audio": audio})
    if instruction:
        user.append({"type": "text", "text": instruction})
    messages = [{"role": "user", "content": user}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    full = processor.apply_chat_template([*messages, {"role": "assistant", "content": answer}])
    if not full.startswith(prompt) or prompt.count(processor.audio_token) != 1:
        raise ValueError(
            "chat_format needs a chat template that renders the generation prompt as the start of the finished "
            "exchange, with the audio once; this LLM's does not. Train with chat_format=False."
        )
    before, after = prompt.split(processor.audio_token)
    return [
        Segment("text", before, separator="", supervised=False),
        Segment("speech", transcript, audio, word_times, separator=""),
        Segment("text", after, separator="", supervised=False),
        Segment("text", full[len(prompt) :], separator=""),
    ]


def whole_utterance_segments(
    transcript: str,
    audio: np.ndarray,
    continuation: str,
    word_times: list[tuple[float, float]] | None = None,
    prompt: str | None = None,
) -> list[Segment]:
    """Speech for the whole utterance, then the (filled-in) text continuation that the loss supervises; after
    an unsupervised `prompt` when one is given (`Question: ` before a spoken question). A prompt that ends with
    whitespace is followed by the clip directly, as in the evaluation harness's `Question: <|audio|>`."""
    lead = [Segment("text", prompt, supervised=False)] if prompt else []
    speech = Segment(
        "speech", transcript, audio, word_times, separator="" if (prompt or "")[-1:].isspace() else " "
    )
    separator = "" if continuation[:1].isspace() else " "
    return [*lead, speech, Segment("text", continuation, separator=separator)]


def fill_continuation(template: str, row: dict, transcript: str) -> str:
    """The continuation template filled in for a row: `{transcript}` is the row's transcript ("Repeat what was
    said: {transcript}" gives the dense "repeat" format, where the teacher is nearly certain of every token),
    `{answer}` its `answer` column (the text LLM's own reply, `python -m trainers.distillation.chat_answers`). A row's own
    `continuation` column is used as it is instead."""
    if row.get("continuation") is not None:
        own = row["continuation"]
        if not isinstance(own, str) or not own.strip():
            raise BadRowError("continuation: the row's own continuation must be non-empty text.")
        return own
    answer = row.get("answer")
    if "{answer}" in template and (not isinstance(answer, str) or not answer.strip()):
        raise BadRowError(
            "continuation: the template uses {answer} and the row has none; write the answers with "
            "python -m trainers.distillation.chat_answers."
        )
    return template.format(transcript=transcript, answer=answer)


def encode_segments(
    segments: list[Segment], processor: SaladProcessor, add_special_tokens: bool = True
) -> EncodedExample:
    """Token ids of the student and the teacher, and the positions that predict the same text tokens.

    Segments are tokenized one by one (each after its `separator`, a space unless a chat template says
    otherwise), so a text segment has the same ids in both sequences; a speech segment is `num_tokens(clip)`
    placeholders for the student and its transcript for the teacher. Every supervised text token (but the very
    first of the sequence) is predicted by the position before it in each sequence: those two positions form a
    pair. Positions predicting audio, transcript or template-markup tokens are not paired: the student has no
    text of its own to predict there. `add_special_tokens=False` for segments rendered by a chat template, which
    writes any BOS itself.
    """
    tokenizer = processor.tokenizer
    spec = processor.length_spec
    prefix = tokenizer("", add_special_tokens=True)["input_ids"] if add_special_tokens else []  # BOS, if used
    student, teacher, clips = list(prefix), list(prefix), []
    student_positions, teacher_positions, targets = [], [], []
    for index, segment in enumerate(segments):
        separator = segment.separator if index else ""
        ids = tokenizer(separator + segment.text, add_special_tokens=False)["input_ids"]
        if segment.kind == "speech":
            if segment.audio is None or segment.audio.size == 0:
                raise BadRowError(f"speech segment {index} ({segment.text!r}) has no audio.")
            clips.append(segment.audio)
            student += [processor.audio_token_id] * spec.num_tokens(segment.audio.size)
            teacher += ids
            continue
        for token in ids:
            if student and segment.supervised:
                student_positions.append(len(student) - 1)
                teacher_positions.append(len(teacher) - 1)
                targets.append(token)
            student.append(token)
            teacher.append(token)
    return EncodedExample(student, teacher, clips, student_positions, teacher_positions, targets)


def decode_row_audio(audio: Any, sampling_rate: int) -> np.ndarray:
    """A row's audio as mono float32 at `sampling_rate`; `BadRowError` when it cannot be decoded or is not
    usable as speech (non-finite or absurdly loud samples, a sampling rate out of range: `load_audio`'s rules)."""
    try:
        if isinstance(audio, dict) and "array" in audio:
            clip = load_audio(np.asarray(audio["array"]), sampling_rate, audio["sampling_rate"])
        else:
            clip = load_audio(
                audio.get("bytes") or audio["path"] if isinstance(audio, dict) else audio, sampling_rate
            )
    except InvalidAudioError as error:
        raise BadRowError(f"audio is not usable: {error}") from error
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise BadRowError(f"audio could not be decoded: {error}") from error
    if clip.size == 0:
        raise BadRowError("audio is empty.")
    return clip


def word_timestamps_with_asr(asr_pipeline, audio: np.ndarray, sampling_rate: int) -> dict[str, list]:
    """Word alignment from a Whisper ASR pipeline (`return_timestamps="word"`), in this module's row schema."""
    result = asr_pipeline({"raw": audio, "sampling_rate": sampling_rate}, return_timestamps="word")
    chunks = [chunk for chunk in result["chunks"] if chunk["text"].strip()]
    return {
        "words": [chunk["text"].strip() for chunk in chunks],
        "word_starts": [float(chunk["timestamp"][0]) for chunk in chunks],
        "word_ends": [float(chunk["timestamp"][1] or chunk["timestamp"][0]) for chunk in chunks],
    }


def new_row_stats() -> dict:
    """A collator's running counts: rows seen, rows skipped, and skipped rows per reason."""
    return {"rows": 0, "bad_rows": 0, "bad_row_reasons": {}}


def usable_rows(
    rows: list[dict], encode: Callable[[dict], Any], stats: dict, max_bad_row_fraction: float
) -> tuple[list, dict[str, int]]:
    """`encode` applied to each row, skipping the rows it refuses (`BadRowError`) and counting them per reason (the
    text before the error's first colon) in the run's `stats` and in the batch's own counts, which are returned.
    Raises once the skipped rows pass `max_bad_row_fraction` of the rows seen (of at least 100), or when no row of
    the batch is usable."""
    encoded, reasons = [], {}
    for row in rows:
        stats["rows"] += 1
        try:
            encoded.append(encode(row))
        except BadRowError as error:
            stats["bad_rows"] += 1
            reason = str(error).split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
            stats["bad_row_reasons"][reason] = stats["bad_row_reasons"].get(reason, 0) + 1
            if stats["bad_rows"] > max_bad_row_fraction * max(stats["rows"], 100):
                raise ValueError(
                    f"{stats['bad_rows']} of {stats['rows']} rows could not be used ({stats['bad_row_reasons']}), "
                    f"more than max_bad_row_fraction={max_bad_row_fraction}. Fix the data or raise the threshold."
                ) from error
    if not encoded:
        raise ValueError(f"No usable row in this batch of {len(rows)}; see the collator's stats: {stats}")
    return encoded, reasons


@dataclass
class SaladDistillationCollator:
    """Rows -> a batch of student inputs, teacher inputs and the pairs of positions to distill.

    Output keys: `input_ids`, `attention_mask`, `input_features`, `input_features_mask` (student);
    `teacher_input_ids`, `teacher_attention_mask`; `student_index` and `teacher_index` (flat indices into
    `[batch * seq]` of each side) and `target_ids`, one entry per supervised token; with audio,
    `speech_seconds`, the batch's seconds of speech (logged, for curves against minutes of speech seen).

    Rows with word timestamps are interleaved with probability `interleave_probability`, else spoken whole.
    With `chat_format` every row is spoken whole inside the LLM's chat template (`chat_segments`).
    """

    processor: SaladProcessor
    text_span: tuple[int, int] = (10, 30)
    speech_span: tuple[int, int] = (5, 15)
    continuation: str = "{transcript}"
    interleave_probability: float = 1.0
    chat_format: bool = False
    chat_instruction: str | None = None
    max_bad_row_fraction: float = 0.01
    padding_side: str = "right"
    seed: int = 0
    stats: dict = field(default_factory=new_row_stats)

    def row_to_segments(self, row: dict) -> list[Segment]:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRowError("the row has no text.")
        if row.get("audio") is None:
            return [Segment("text", text.strip())]
        audio = decode_row_audio(row["audio"], self.processor.sampling_rate)
        # The format and spans of a row depend on the row and the seed only: a resumed run sees the same examples.
        rng = random.Random(f"{self.seed}:{text}")
        if not row.get("words") or row.get("continuation") is not None:
            return self.whole_utterance(row, audio)
        words, starts, ends = checked_word_times(row, audio.size / self.processor.sampling_rate)
        if not self.chat_format and rng.random() < self.interleave_probability:
            return interleaved_segments(
                words,
                starts,
                ends,
                audio,
                self.processor.sampling_rate,
                rng,
                self.text_span,
                self.speech_span,
            )
        return self.whole_utterance(row, audio, list(zip(starts, ends)))

    def whole_utterance(
        self, row: dict, audio: np.ndarray, word_times: list[tuple[float, float]] | None = None
    ) -> list[Segment]:
        """The utterance spoken whole, then the continuation: raw, or as a chat exchange (`chat_format`)."""
        transcript = row["text"].strip()
        continuation = fill_continuation(self.continuation, row, transcript)
        prompt = row.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise BadRowError("prompt: the row's prompt must be non-empty text.")
        if self.chat_format:
            return chat_segments(
                transcript, audio, continuation, self.chat_instruction, self.processor, word_times, prompt
            )
        return whole_utterance_segments(transcript, audio, continuation, word_times, prompt)

    def encode_rows(self, rows: list[dict]) -> tuple[list[EncodedExample], dict[str, int]]:
        """Encode the rows, skipping and counting bad ones (returned per reason); raise once they pass the
        allowed share."""
        return usable_rows(
            rows,
            lambda row: encode_segments(self.row_to_segments(row), self.processor, not self.chat_format),
            self.stats,
            self.max_bad_row_fraction,
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The batch, with `rows_in_batch` and `bad_row_reasons` (this batch's skipped rows per reason): the
        counts travel with the batch, so the trainer sees them even when a dataloader worker process collates."""
        examples, reasons = self.encode_rows(rows)
        batch = collate_examples(examples, self.processor, self.padding_side)
        batch["rows_in_batch"] = len(rows)
        batch["bad_row_reasons"] = reasons
        return batch


def pad_sequences(
    sequences: list[list[int]], pad_id: int, side: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad to the longest; returns ids, attention mask and each row's offset (left padding shifts positions)."""
    longest = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        offset = longest - len(seq) if side == "left" else 0
        ids[row, offset : offset + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, offset : offset + len(seq)] = 1
        offsets.append(offset)
    return ids, mask, offsets


def collate_examples(
    examples: list[EncodedExample], processor: SaladProcessor, padding_side: str = "right"
) -> dict:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    pad_id = processor.tokenizer.pad_token_id
    student_ids, student_mask, student_offsets = pad_sequences(
        [e.student_ids for e in examples], pad_id, padding_side
    )
    teacher_ids, teacher_mask, teacher_offsets = pad_sequences(
        [e.teacher_ids for e in examples], pad_id, padding_side
    )
    student_index, teacher_index, targets = [], [], []
    for row, example in enumerate(examples):
        student_index += [
            row * student_ids.shape[1] + student_offsets[row] + p for p in example.student_positions
        ]
        teacher_index += [
            row * teacher_ids.shape[1] + teacher_offsets[row] + p for p in example.teacher_positions
        ]
        targets += example.target_ids
    batch = {
        "input_ids": student_ids,
        "attention_mask": student_mask,
        "teacher_input_ids": teacher_ids,
        "teacher_attention_mask": teacher_mask,
        "student_index": torch.tensor(student_index, dtype=torch.long),
        "teacher_index": torch.tensor(teacher_index, dtype=torch.long),
        "target_ids": torch.tensor(targets, dtype=torch.long),
    }
    clips = [clip for example in examples for clip in example.clips]
    if clips:
        audio_inputs = processor.prepare_audio(clips).inputs
        batch["input_features"] = torch.from_numpy(audio_inputs["input_features"])
        batch["input_features_mask"] = torch.from_numpy(audio_inputs["input_features_mask"])
        batch["speech_seconds"] = torch.tensor(sum(clip.size for clip in clips) / processor.sampling_rate)
    return batch


def speech_row(synthesis: Synthesis, audio_path: str, **columns) -> dict:
    """A `trainers.distillation.data` row: text, audio path and word timestamps (None where the engine gives none, so the
    trainer uses the whole utterance), plus how it was made and `columns`."""
    timed = synthesis.word_starts is not None and synthesis.word_ends is not None
    return {
        "text": synthesis.text,
        "audio": audio_path,
        "words": synthesis.words if timed else None,
        "word_starts": synthesis.word_starts if timed else None,
        "word_ends": synthesis.word_ends if timed else None,
        "duration": round(synthesis.duration, 4),
        "backend": synthesis.backend,
        "voice": synthesis.voice,
        "rate": synthesis.rate,
        "pitch": synthesis.pitch,
        **columns,
    }


def write_rows(rows: Sequence[dict], path: str | Path) -> Path:
    """Write rows as jsonl, atomically."""
    path = Path(path)

    def save(temporary: Path) -> None:
        with open(temporary, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)

    write_atomic(path, save)
    return path


def load_rows(name: str | None, files: list[str], split: str, streaming: bool, config: str | None = None):
    """A `datasets` split from a name/directory or from local files (format from the file extension)."""
    if name is not None:
        return load_dataset(name, config, split=split, streaming=streaming)
    extension = files[0].rsplit(".", 1)[-1]
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(extension)
    if builder is None:
        raise ValueError(f"Unsupported data file {files[0]!r}: use jsonl, json, csv or parquet.")
    parts = [
        load_dataset(builder, data_files={split: [file]}, split=split, streaming=streaming) for file in files
    ]
    return concatenate_datasets(with_columns(parts)) if len(parts) > 1 else parts[0]


def with_columns(datasets: list) -> list:
    """The datasets with the union of their columns, in one order; a column a dataset lacks is None there.

    So files with different columns (TTS rows with word timestamps next to human speech without) load as one.
    """
    columns = list(dict.fromkeys(column for dataset in datasets for column in dataset.column_names))
    aligned = []
    for dataset in datasets:
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            dataset = dataset.map(lambda row, missing=missing: dict.fromkeys(missing))
        aligned.append(dataset.select_columns(columns))
    return aligned


SPEAKING_RATE_WORDS_PER_SECOND = 2.5  # read English speech; the TTS training rows average about 2.6


def speaking_seconds(text: str) -> float:
    """About how long `text` takes to say: the length by which a text-only row is grouped among spoken ones."""
    return len(text.split()) / SPEAKING_RATE_WORDS_PER_SECOND


def check_lengths(speech, column: str) -> None:
    """Refuse speech rows without the length that grouping by length sorts by, before the sampler meets a null.

    Files with different columns load as one (`with_columns`), so a file without the column gives nulls."""
    if column not in speech.column_names:
        raise ValueError(
            f"train_sampling_strategy='group_by_length' sorts rows by {column!r}, which the speech rows lack: give "
            "each row its audio's length in seconds (`salad-prepare-data` writes `duration`), or set "
            "length_column_name or another train_sampling_strategy."
        )
    missing = speech[column].count(None)
    if missing:
        raise ValueError(
            f"{missing} of {len(speech)} speech rows have no {column!r}, which train_sampling_strategy="
            f"'group_by_length' sorts rows by: give each of them its audio's length in seconds, or set another "
            "train_sampling_strategy."
        )


SUBSET_SEED = 0


def speech_subset(speech, count: int, streaming: bool):
    """`count` rows drawn by a fixed seed (`SaladDataArguments.max_train_samples`): the same subset in every run.
    A stream gives its first `count` rows (a shuffle buffer would draw another subset each epoch)."""
    if count < 1:
        raise ValueError(f"max_train_samples must be at least 1, got {count}.")
    if streaming:
        return speech.take(count)
    if count > len(speech):
        raise ValueError(
            f"max_train_samples={count} but the speech data has {len(speech)} rows: lower it, or leave it unset to "
            "train on every row."
        )
    return speech.shuffle(seed=SUBSET_SEED).select(range(count))


def build_train_dataset(data_args: SaladDataArguments, training_args: SaladDistillationConfig):
    """Speech rows, with text-only rows interleaved at `text_only_ratio` (sampled, seeded)."""
    if data_args.dataset_name is None and not data_args.data_files:
        raise ValueError("Give dataset_name or data_files for the speech data.")
    speech = load_rows(
        data_args.dataset_name, data_args.data_files, data_args.train_split, data_args.streaming,
        data_args.dataset_config,
    )  # fmt: skip
    if data_args.max_train_samples is not None:
        speech = speech_subset(speech, data_args.max_train_samples, data_args.streaming)
    grouped_by = (
        training_args.length_column_name
        if training_args.train_sampling_strategy == "group_by_length"
        else None
    )
    if grouped_by is not None and not data_args.streaming:
        check_lengths(speech, grouped_by)
    has_text = data_args.text_dataset_name is not None or data_args.text_data_files
    if not has_text or training_args.text_only_ratio == 0:
        return speech
    if training_args.objective == "choice":
        raise ValueError(
            "objective='choice' trains on spoken questions, and text-only rows have no options: leave out "
            "text_dataset_name and text_data_files (or set text_only_ratio=0). The LLM keeps its text through "
            "choice_text_weight instead."
        )
    text = load_rows(
        data_args.text_dataset_name, data_args.text_data_files, data_args.text_split, data_args.streaming
    )
    # Text rows get the speech columns as nulls, so both share one schema for interleaving; grouping by length
    # needs a length on every row, so a text row gets the seconds it would take to say.
    speech_columns = [column for column in (speech.column_names or ["text", "audio"]) if column != "text"]

    def speech_columns_of_text_row(row: dict) -> dict:
        columns = dict.fromkeys(speech_columns)
        if grouped_by in columns:
            columns[grouped_by] = speaking_seconds(row["text"])
        return columns

    text = text.select_columns(["text"]).map(speech_columns_of_text_row)
    ratio = training_args.text_only_ratio
    return interleave_datasets(
        [speech, text],
        probabilities=[1 - ratio, ratio],
        seed=training_args.seed,
        stopping_strategy="first_exhausted",
    )
