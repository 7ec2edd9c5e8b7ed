"""Alignment probes: WER normalization, the shuffled-audio control, chat probes, the training callback."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import OTHER_INSTANCE_ULPS, build_tiny, decoder_tiny, float_tolerance, tone
from datasets import Dataset
from test_trainer import config, speech_rows

from trainers.distillation import probes
from trainers.distillation.probes import (
    AlignmentProbeCallback,
    ProbeRow,
    RepeatPrompt,
    choice_accuracy,
    choice_options,
    load_probe_rows,
    run_probes,
    word_error_rate,
)
from trainers.distillation.trainer import SaladDistillationTrainer


def probe_rows(seconds: tuple[float, ...] = (0.8,) * 4) -> list[ProbeRow]:
    texts = ["one two three", "the lazy dog", "four five six", "quick brown fox"]
    return [ProbeRow(text, tone(seconds[i], freq=200 + 150 * i, seed=i)) for i, text in enumerate(texts)]


def test_word_error_rate_compares_words_not_case_or_punctuation():
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    assert word_error_rate(["the lazy dog"], ["the crazy dog"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("adapter_type", ["mlp", "whisper_decoder"])
def test_probes_report_the_content_gain_against_another_clip(adapter_type):
    model, processor = build_tiny("whisper", "mlp") if adapter_type == "mlp" else decoder_tiny()
    # a random tiny Whisper writes the same words for every tone: clips of other lengths get other transcripts
    results = run_probes(model, processor, probe_rows(seconds=(0.6, 0.8, 1.0, 1.2)))
    numbers = {key: value for key, value in results.items() if isinstance(value, float)}
    expected = {"transcript_nll", "control_nll", "content_gain_nll", "repeat_wer"}
    assert set(numbers) == expected | {
        "transcript_accuracy",
        "control_accuracy",
    }
    assert all(np.isfinite(value) for value in numbers.values())
    assert results["content_gain_nll"] == pytest.approx(results["control_nll"] - results["transcript_nll"])
    assert results["transcript_nll"] != results["control_nll"]  # a random adapter still hears differences


def test_content_gain_is_zero_when_the_adapter_ignores_the_audio():
    model, processor = build_tiny("whisper", "mlp")
    with torch.no_grad():
        model.adapter.down_proj.weight.zero_()  # every clip becomes the same zero embeddings
    results = run_probes(model, processor, probe_rows(), with_generation=False)
    assert results["content_gain_nll"] == pytest.approx(
        0.0, abs=float_tolerance(torch.float32, OTHER_INSTANCE_ULPS)["atol"]
    )
    assert "repeat_wer" not in results


def test_chat_probes_ask_in_the_chat_template_as_chat_format_training_does():
    model, processor = build_tiny("whisper", "mlp")
    prompt = RepeatPrompt(chat=True)
    expected = "<|im_start|>user\n<|audio|>\nRepeat what was said.<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.text(processor) == expected
    assert (
        prompt.transcript_ids(processor, "the lazy dog") == processor.tokenizer("the lazy dog")["input_ids"]
    )
    chat = run_probes(model, processor, probe_rows(), prompt=prompt)
    raw = run_probes(model, processor, probe_rows(), with_generation=False)
    assert np.isfinite(chat["transcript_nll"]) and isinstance(chat["repeat_wer"], float)
    assert chat["transcript_nll"] != raw["transcript_nll"]


def test_probe_rows_are_spread_over_the_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    with open(path, "w") as handle:
        for i in range(10):
            clip = {"array": tone(0.2, seed=i).tolist(), "sampling_rate": 16000}
            handle.write(json.dumps({"text": f"row {i}", "audio": clip}) + "\n")
    assert [row.text for row in load_probe_rows(str(path), 3, 16000)] == ["row 0", "row 4", "row 9"]
    with pytest.raises(ValueError, match="at least 2"):
        load_probe_rows(str(path), 1, 16000)


def test_callback_probes_at_the_start_and_every_n_steps(tmp_path):
    model, processor = build_tiny("whisper", "mlp")
    rows = [row for row in speech_rows() if row["audio"] is not None]
    args = config(tmp_path, text_only_ratio=0.0, max_steps=4)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )
    trainer.add_callback(AlignmentProbeCallback(processor, probe_rows()[:2], 2, args.output_dir))
    answers = AlignmentProbeCallback(
        processor, question_probe_rows()[:2], 4, args.output_dir, name="answer_probe"
    )
    trainer.add_callback(answers)
    trainer.train()
    probed = [entry["step"] for entry in trainer.state.log_history if "probe_repeat_wer" in entry]
    assert probed == [0, 2, 4]
    written = [json.loads(line) for line in (tmp_path / "out" / "probes.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in written] == [0, 2, 4] and "repeat_examples" in written[0]
    answered = [e["step"] for e in trainer.state.log_history if "answer_probe_content_gain_nll" in e]
    assert answered == [0, 4] and (tmp_path / "out" / "answer_probes.jsonl").exists()


def question_probe_rows() -> list[ProbeRow]:
    answers = ["A heavy cloth", "A small boat", "A loud bird", "A tall tree"]
    return [
        ProbeRow(
            f"what is thing {i}", tone(0.8, freq=200 + 150 * i, seed=i), "Question: ", "\nAnswer:", answer
        )
        for i, answer in enumerate(answers)
    ]


def test_answer_probes_score_the_answer_in_the_harness_frame(tmp_path):
    path = tmp_path / "questions.jsonl"
    clip = {"array": tone(0.2).tolist(), "sampling_rate": 16000}
    row = {"text": "what is a canvas", "audio": clip, "prompt": "Question: ",
           "continuation": "\nAnswer: A heavy cloth", "answer": "A heavy cloth"}  # fmt: skip
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "text": "other"}) + "\n")
    loaded = load_probe_rows(str(path), 2, 16000)[0]
    assert (loaded.prompt, loaded.cue, loaded.answer) == ("Question: ", "\nAnswer:", "A heavy cloth")
    model, processor = build_tiny("whisper", "mlp")
    before, after, target = loaded.parts(processor, RepeatPrompt())
    tokenizer = processor.tokenizer
    assert tokenizer.decode(before) == "Question: " and tokenizer.decode(after) == "\nAnswer:"
    assert target == tokenizer(" A heavy cloth", add_special_tokens=False)["input_ids"]
    results = run_probes(model, processor, question_probe_rows())
    assert "repeat_wer" not in results  # nothing to repeat: the target is the answer
    assert results["content_gain_nll"] == pytest.approx(results["control_nll"] - results["transcript_nll"])
    repeat = run_probes(model, processor, probe_rows(), with_generation=False)
    assert results["transcript_nll"] != repeat["transcript_nll"]
    path.write_text(json.dumps({**row, "continuation": "\nAnswer: something else"}) + "\n")
    with pytest.raises(ValueError, match="does not end with the answer"):
        load_probe_rows(str(path), 2, 16000)


def test_choice_options_take_the_next_rows_answers_and_skip_repeats():
    rows = [replace(row, answer=answer) for row, answer in zip(question_probe_rows() * 2, "ABACDE")]
    assert choice_options(rows, 3) == [
        ["A", "B", "C"], ["B", "A", "C"], ["A", "C", "D"], ["C", "D", "E"], ["D", "E", "A"], ["E", "A", "B"]
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs 6 distinct answers among its rows; these 6 rows have 5"):
        choice_options(rows, 6)


def test_choice_accuracy_picks_by_the_mean_log_probability_per_token(monkeypatch):
    """The row's own answer (option 0) against the others by NLL per token, not summed: row 0's answer costs more in
    all (6 nats) but less per token (2) than its distractors (4 over 1), row 1's loses per token (3 against 1)."""
    rows = question_probe_rows()[:2]
    per_option = {0: [(6.0, 0, 3), (4.0, 0, 1)], 1: [(3.0, 0, 1), (2.0, 0, 2)]}
    asked = []

    def scored(model, processor, batch, batch_size):
        asked.extend(row.answer for row in batch)
        return per_option[0] + per_option[1]

    monkeypatch.setattr(probes, "target_scores", scored)
    assert choice_accuracy(None, None, rows, num_options=2) == 0.5
    assert asked == ["A heavy cloth", "A small boat", "A small boat", "A heavy cloth"]


def test_answer_probes_report_the_choice_accuracy_and_repeat_probes_do_not():
    model, processor = build_tiny("whisper", "mlp")
    answers = run_probes(model, processor, question_probe_rows())
    assert 0.0 <= answers["choice_accuracy"] <= 1.0 and answers["choice_chance"] == 0.25
    two = run_probes(model, processor, question_probe_rows()[:2])  # two distinct answers: a 2-way choice
    assert two["choice_chance"] == 0.5
    assert "choice_accuracy" not in run_probes(model, processor, probe_rows(), with_generation=False)


def test_the_choice_probe_transcribes_each_question_once_and_scores_as_alone(monkeypatch):
    """A question's four options are rows of one batch that hear one clip: Whisper transcribes it once for them (two
    questions per batch of 8), and each option scores as it does in a batch of its own."""
    model, processor = decoder_tiny()
    rows = question_probe_rows()
    options = [replace(row, answer=option) for row, row_options in zip(rows, choice_options(rows, 4))
               for option in row_options]  # fmt: skip
    calls, transcribe = [], model.transcribe
    monkeypatch.setattr(model, "transcribe", lambda f, m: calls.append(f.shape[0]) or transcribe(f, m))
    with torch.no_grad():
        together = probes.target_scores(model, processor, options, batch_size=8)
        assert calls == [2, 2]
        alone = [probes.target_scores(model, processor, [row], batch_size=1)[0] for row in options]
    assert [(hits, length) for _, hits, length in together] == [(hits, length) for _, hits, length in alone]
    torch.testing.assert_close(
        torch.tensor([nll for nll, _, _ in together]), torch.tensor([nll for nll, _, _ in alone]),
        **float_tolerance(torch.float32, OTHER_INSTANCE_ULPS),
    )  # fmt: skip
