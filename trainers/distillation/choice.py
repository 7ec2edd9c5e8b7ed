"""Batches for `objective="choice"`: each spoken question's options, as the student hears them and the teacher reads them.

The eval harness asks a multiple-choice item by scoring each option after the question and picking the one with the
highest mean log-probability per token. The choice objective distills exactly that decision
(`trainers.distillation.losses.choice_distillation_loss`). A row is a spoken question in the schema that
`salad-prepare-data --source definition_questions` writes: `text` (the question as spoken), `audio`, `answer`, and a
`continuation` that ends with the answer, with an optional `prompt` before the question. Its frame is the harness's,
`Question: <clip>\\nAnswer: <option>` for those rows. Its options are its own answer, then the answers of the rows
after it in the batch (`choice_options`), so a batch needs at least as many distinct answers as there are options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from modeling_salad import SaladProcessor

from .data import BadRowError, decode_row_audio, new_row_stats, pad_sequences, usable_rows
from .probes import ProbeRow, RepeatPrompt, choice_options, question_fields


@dataclass
class SaladChoiceCollator:
    """Spoken-question rows -> every option of every question, after its clip (student) and after its text (teacher).

    Output keys, with S = questions x `num_options` sequences, question by question and its own answer first:
    `input_ids`, `attention_mask` (`[S, L]`: prompt, the clip's audio slots, cue, option); `student_spans` (`[S, 2]`,
    each option's `(begin, length)`); `teacher_input_ids`, `teacher_attention_mask`, `teacher_spans` (the same with
    the question's text in place of the clip); `input_features`, `input_features_mask` (each clip's windows once);
    `sequence_windows` (`[W]`, the windows that the S sequences hear, in order: index `input_features` with it);
    `options_per_question`; `speech_seconds`, `rows_in_batch`, `bad_row_reasons` (as `SaladDistillationCollator`).

    Args:
        processor: the model's [`SaladProcessor`].
        num_options: options per question (the batch needs as many distinct answers).
        max_bad_row_fraction: the share of unusable rows (counted per reason) above which it raises.
    """

    processor: SaladProcessor
    num_options: int = 4
    max_bad_row_fraction: float = 0.01
    stats: dict = field(default_factory=new_row_stats)

    def question(self, row: dict) -> ProbeRow:
        """The row as a question with its frame and answer; a `BadRowError` names what it lacks."""
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadRowError("the row has no text.")
        if row.get("audio") is None:
            raise BadRowError("no audio: objective='choice' trains on spoken questions only.")
        if row.get("prompt") is not None and not isinstance(row["prompt"], str):
            raise BadRowError("prompt: the row's prompt must be text.")
        try:
            fields = question_fields(row, "this row")
        except ValueError as error:
            raise BadRowError(f"continuation: {error}") from error
        if not fields:
            raise BadRowError(
                "no answer: objective='choice' needs rows with `answer` and a `continuation` ending with it "
                "(salad-prepare-data --source definition_questions)."
            )
        return ProbeRow(text.strip(), decode_row_audio(row["audio"], self.processor.sampling_rate), **fields)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        questions, reasons = usable_rows(rows, self.question, self.stats, self.max_bad_row_fraction)
        tokenizer = self.processor.tokenizer
        student, teacher, student_spans, teacher_spans = [], [], [], []
        for question, options in zip(questions, choice_options(questions, self.num_options)):
            frame = question.prompt + question.text + question.cue  # the question read, not heard
            text_ids = tokenizer(frame, add_special_tokens=False)["input_ids"]
            for option in options:
                ids, (begin, length) = replace(question, answer=option).sequence(
                    self.processor, RepeatPrompt()
                )
                student.append(ids)
                student_spans.append((begin, length))
                teacher.append(text_ids + ids[begin:])
                teacher_spans.append((len(text_ids), length))
        pad = tokenizer.pad_token_id
        input_ids, attention_mask, _ = pad_sequences(student, pad, "right")
        teacher_ids, teacher_mask, _ = pad_sequences(teacher, pad, "right")
        prepared = self.processor.prepare_audio([question.audio for question in questions])
        first_window = np.cumsum([0, *prepared.windows_per_clip])
        windows = [
            window
            for clip in range(len(questions))
            for _ in range(self.num_options)
            for window in range(first_window[clip], first_window[clip + 1])
        ]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "student_spans": torch.tensor(student_spans, dtype=torch.long),
            "teacher_input_ids": teacher_ids,
            "teacher_attention_mask": teacher_mask,
            "teacher_spans": torch.tensor(teacher_spans, dtype=torch.long),
            "input_features": torch.from_numpy(prepared.inputs["input_features"]),
            "input_features_mask": torch.from_numpy(prepared.inputs["input_features_mask"]),
            "sequence_windows": torch.tensor(windows, dtype=torch.long),
            "speech_seconds": torch.tensor(
                sum(question.audio.size for question in questions) / self.processor.sampling_rate
            ),
            "options_per_question": self.num_options,
            "rows_in_batch": len(rows),
            "bad_row_reasons": reasons,
        }
