"""objective="choice": the option scores, the loss, the batches and the trainer that distill the harness's choice."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import OTHER_PATH_ULPS, assert_close_in_dtype, build_tiny, decoder_tiny, tone
from datasets import Dataset

from trainers.distillation.choice import SaladChoiceCollator
from trainers.distillation.config import SaladDataArguments, SaladDistillationConfig
from trainers.distillation.data import build_train_dataset
from trainers.distillation.losses import choice_distillation_loss, option_log_probs
from trainers.distillation.probes import ProbeRow, target_scores
from trainers.distillation.trainer import SaladDistillationTrainer

ANSWERS = [
    "A heavy cloth",
    "A small boat",
    "A loud bird",
    "A tall tree",
    "A cold river",
    "A red stone",
    "A dry leaf",
    "A wide road",
]


def question_rows(answers=ANSWERS) -> list[dict]:
    """Spoken questions in the schema of `salad-prepare-data --source definition_questions`."""
    return [
        {
            "text": f"What is thing {i}?",
            "audio": {
                "array": tone(0.6 + 0.1 * i, freq=200 + 120 * i, seed=i).tolist(),
                "sampling_rate": 16000,
            },
            "prompt": "Question: ",
            "continuation": f"\nAnswer: {answer}",
            "answer": answer,
        }
        for i, answer in enumerate(answers)
    ]


def choice_config(tmp_path, **overrides) -> SaladDistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), objective="choice", max_steps=2, per_device_train_batch_size=4,
        dataloader_drop_last=True, learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    values.update(overrides)
    return SaladDistillationConfig(**values)


# ---------------------------------------------------------------- the loss alone
def test_option_log_probs_are_each_spans_mean_log_probability():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    weight, bias = torch.randn(11, 8, requires_grad=True), torch.randn(11)
    ids = torch.randint(0, 11, (3, 7))
    spans = torch.tensor([[1, 2], [3, 4], [6, 1]])
    scores = option_log_probs(hidden, weight, ids, spans, bias)
    expected = torch.stack(
        [
            (hidden[s, begin - 1 : begin - 1 + length] @ weight.T + bias)
            .log_softmax(-1)
            .gather(-1, ids[s, begin : begin + length, None])
            .mean()
            for s, (begin, length) in enumerate(spans.tolist())
        ]
    )
    assert_close_in_dtype(scores, expected, ulps=OTHER_PATH_ULPS)
    got = torch.autograd.grad(scores.sum(), (hidden, weight))
    want = torch.autograd.grad(expected.sum(), (hidden, weight))
    for actual, reference in zip(got, want):
        assert_close_in_dtype(actual, reference, ulps=OTHER_PATH_ULPS)


def test_option_log_probs_refuse_a_span_that_no_position_predicts():
    with pytest.raises(ValueError, match="begin >= 1 and length >= 1"):
        option_log_probs(torch.zeros(1, 4, 2), torch.zeros(5, 2), torch.zeros(1, 4, dtype=torch.long),
                         torch.tensor([[0, 2]]))  # fmt: skip


def test_choice_loss_is_the_kl_between_the_option_distributions():
    torch.manual_seed(0)
    teacher = torch.randn(3, 4, requires_grad=True)
    student = torch.randn(3, 4, requires_grad=True)
    text = torch.randn(3, 4)
    p = teacher.detach().softmax(-1)

    def kl(scores):
        return (p * (p.log() - scores.log_softmax(-1))).sum(-1)

    output = choice_distillation_loss(teacher, student, text, text_weight=0.5, num_items_in_batch=6)
    assert_close_in_dtype(output.loss, (kl(student).sum() + 0.5 * kl(text).sum()) / 6, ulps=OTHER_PATH_ULPS)
    assert_close_in_dtype(output.divergence_sum, kl(student).sum(), ulps=OTHER_PATH_ULPS)
    output.loss.backward()
    assert teacher.grad is None and student.grad is not None  # the teacher is a constant
    assert output.teacher_right == int((teacher.argmax(-1) == 0).sum()) and output.num_questions == 3
    alone = choice_distillation_loss(teacher, student)  # default: the mean over this call's questions
    assert_close_in_dtype(alone.loss, kl(student).mean(), ulps=OTHER_PATH_ULPS)
    assert alone.text_divergence_sum is None
    # only the differences between a question's options count: a shift shared by its options changes nothing
    shifted = choice_distillation_loss(teacher, student + torch.tensor([[5.0], [-3.0], [1.0]]))
    assert_close_in_dtype(shifted.loss, alone.loss, ulps=OTHER_PATH_ULPS)
    assert float(choice_distillation_loss(teacher, teacher.detach()).loss) == pytest.approx(0.0, abs=1e-6)


def test_choice_loss_refuses_scores_of_other_shapes():
    with pytest.raises(ValueError, match=r"both be \[questions, options\]"):
        choice_distillation_loss(torch.zeros(2, 4), torch.zeros(2, 3))


# ---------------------------------------------------------------- the batches
def test_the_collator_asks_every_option_after_the_clip_and_after_the_text():
    _, processor = build_tiny("whisper", "mlp")
    tokenizer = processor.tokenizer
    rows = question_rows()[:5]
    batch = SaladChoiceCollator(processor, num_options=4)(rows)
    assert batch["input_ids"].shape[0] == 20 and batch["teacher_input_ids"].shape[0] == 20
    assert batch["sequence_windows"].tolist() == [clip for clip in range(5) for _ in range(4)]
    assert batch["input_features"].shape[0] == 5 and batch["rows_in_batch"] == 5
    for sequence in range(20):
        question, option = divmod(sequence, 4)
        (begin, length), (text_begin, text_length) = (
            batch["student_spans"][sequence],
            batch["teacher_spans"][sequence],
        )
        student, teacher = batch["input_ids"][sequence], batch["teacher_input_ids"][sequence]
        # the same option's tokens on both sides, its own answer first and the next rows' answers after it
        answer = ANSWERS[:5][(question + option) % 5]
        expected = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        assert (
            student[begin : begin + length].tolist()
            == expected
            == teacher[text_begin : text_begin + text_length].tolist()
        )
        # the teacher reads the question's text where the student hears its clip, in the harness's frame
        frame = tokenizer(f"Question: What is thing {question}?\nAnswer:", add_special_tokens=False)[
            "input_ids"
        ]
        assert teacher[:text_begin].tolist() == frame
        slots = processor.length_spec.num_tokens(len(rows[question]["audio"]["array"]))
        assert int((student == processor.audio_token_id).sum()) == slots


def test_a_clip_longer_than_a_window_is_heard_whole_by_each_of_its_options():
    _, processor = build_tiny("whisper", "mlp")
    rows = question_rows()[:4]
    rows[1]["audio"] = {"array": tone(31.0, seed=1).tolist(), "sampling_rate": 16000}  # two 30 s windows
    batch = SaladChoiceCollator(processor, num_options=4)(rows)
    assert batch["input_features"].shape[0] == 5
    assert batch["sequence_windows"].tolist() == [0] * 4 + [1, 2] * 4 + [3] * 4 + [4] * 4
    slots = processor.length_spec.num_tokens(16000 * 31)
    assert [int((ids == processor.audio_token_id).sum()) for ids in batch["input_ids"][4:8]] == [slots] * 4


def test_the_collator_counts_a_row_without_an_answer_and_refuses_too_few_answers():
    _, processor = build_tiny("whisper", "mlp")
    collator = SaladChoiceCollator(processor, num_options=4, max_bad_row_fraction=0.5)
    rows = question_rows()[:5]
    plain = {key: value for key, value in rows[0].items() if key not in ("answer", "continuation")}
    batch = collator([plain, *rows[1:]])
    assert batch["bad_row_reasons"] == {"no answer": 1} and batch["input_ids"].shape[0] == 16
    assert collator.stats["bad_rows"] == 1 and collator.stats["rows"] == 5
    with pytest.raises(ValueError, match="needs 4 distinct answers among its rows; these 4 rows have 2"):
        collator(question_rows(["A", "B", "A", "B"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"per_device_train_batch_size": 3}, "at least choice_num_options"),
        ({"dataloader_drop_last": False}, "dataloader_drop_last=True"),
        ({"cache_teacher_states": True}, "cache_teacher_states"),
        ({"choice_num_options": 1}, "choice_num_options must be >= 2"),
        ({"per_device_eval_batch_size": 2}, "per_device_eval_batch_size"),
        ({"chat_format": True, "interleave_probability": 0.0}, "chat_format=False"),
        ({"train_adapter": False}, "Nothing would train"),
    ],
)
def test_the_config_refuses_what_the_choice_objective_cannot_do(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        choice_config(tmp_path, **overrides)


def test_text_only_rows_are_refused_with_the_choice_objective(tmp_path):
    path = tmp_path / "questions.jsonl"
    Dataset.from_list(question_rows()).to_json(path)
    data = SaladDataArguments(data_files=[str(path)], text_data_files=[str(path)])
    with pytest.raises(ValueError, match="text-only rows have no options"):
        build_train_dataset(data, choice_config(tmp_path, text_only_ratio=0.25))


# ---------------------------------------------------------------- the trainer
def randomize_lora(model) -> None:
    """LoRA's B starts at zero, where LoRA on and off read alike: draw it, so that a test tells them apart."""
    with torch.no_grad():
        for name, parameter in model.language_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)


def mean_log_probs_on_text(model, processor, questions, options) -> torch.Tensor:
    """`[questions, options]` each option's mean log-probability after the question's text, by the LLM alone."""
    tokenizer, scores = processor.tokenizer, []
    for question, row_options in zip(questions, options):
        frame = tokenizer(question.prompt + question.text + question.cue, add_special_tokens=False)[
            "input_ids"
        ]
        for option in row_options:
            answer = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            logits = model.language_model(input_ids=torch.tensor([frame + answer])).logits[0].float()
            log_probs = logits[len(frame) - 1 : -1].log_softmax(-1)
            scores.append(log_probs.gather(-1, torch.tensor(answer)[:, None]).mean())
    return torch.stack(scores).view(len(questions), -1)


def test_the_trainers_choice_loss_scores_options_as_the_probes_do(tmp_path):
    """The trainer's loss on a batch equals the KLs between the options' mean log-probabilities computed another way:
    the student's after the clip by the answer probes' scoring (`target_scores`), the teacher's (LoRA off) and the
    student's on the text (LoRA on) by the LLM alone."""
    model, processor = decoder_tiny()
    trainer = SaladDistillationTrainer(
        model=model, args=choice_config(tmp_path, train_llm="lora", lora_r=4, choice_text_weight=0.5),
        processing_class=processor, train_dataset=Dataset.from_list(question_rows()),
    )  # fmt: skip
    randomize_lora(model)
    rows = question_rows()[:4]
    batch = trainer.data_collator(rows)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        questions = [
            ProbeRow(row["text"], np.asarray(row["audio"]["array"], dtype=np.float32), "Question: ", "\nAnswer:",
                     row["answer"])
            for row in rows
        ]  # fmt: skip
        options = [[ANSWERS[(q + k) % 4] for k in range(4)] for q in range(4)]
        asked = [
            replace(q, answer=option) for q, row_options in zip(questions, options) for option in row_options
        ]
        student = torch.tensor([-nll / length for nll, _, length in target_scores(model, processor, asked)])
        text = mean_log_probs_on_text(model, processor, questions, options)
        with model.lora_disabled():
            teacher = mean_log_probs_on_text(model, processor, questions, options).log_softmax(-1)

    def kl(scores: torch.Tensor) -> torch.Tensor:
        return (teacher.exp() * (teacher - scores.view(4, 4).log_softmax(-1))).sum(-1).mean()

    assert float(kl(text)) > 1e-4  # LoRA moved the text side: the text term is not a zero here
    assert_close_in_dtype(loss, kl(student) + 0.5 * kl(text), ulps=OTHER_PATH_ULPS)
    assert (
        trainer._get_num_items_in_batch([batch, batch], torch.device("cpu")) == 8
    )  # questions, not sequences


def parameters(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict, module) -> bool:
    # bitwise: any change to a stored weight counts as training it
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters() if name in before)


@pytest.mark.parametrize(
    ("train_llm", "train_adapter"),
    [("lora", False), ("frozen", True)],
    ids=["lora-alone (experiment 31)", "adapter-alone"],
)
def test_the_choice_objective_trains_what_the_config_says(tmp_path, train_llm, train_adapter):
    model, processor = decoder_tiny()
    args = choice_config(tmp_path, train_llm=train_llm, lora_r=4, train_adapter=train_adapter)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(question_rows())
    )
    adapter, llm = parameters(model.adapter), parameters(model.language_model)
    trainer.train()
    assert changed(adapter, model.adapter) == train_adapter
    assert changed(llm, model.language_model) == (train_llm == "lora")
    logged = [entry for entry in trainer.state.log_history if "choice_divergence" in entry]
    assert len(logged) == 2 and all(entry["rows_seen"] > 0 for entry in logged)
    # the text term runs only where the LLM trains
    assert all(("text_choice_divergence" in entry) == (train_llm == "lora") for entry in logged)
    assert (
        trainer.transcript_cache.hits + trainer.transcript_cache.misses == 8
    )  # each clip once, not per option
