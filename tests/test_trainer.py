"""SaladDistillationTrainer: smoke training per teacher mode, LoRA, resume, CLI and a 2-process run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OTHER_PATH_ULPS, assert_close_in_dtype, build_tiny, float_tolerance, tone
from datasets import Dataset
from transformers import TrainerCallback
from trl import TrlParser

from trainers.distillation.config import SaladDataArguments, SaladDistillationConfig, SaladModelArguments
from trainers.distillation.data import build_train_dataset, speaking_seconds
from trainers.distillation.probes import RepeatPrompt
from trainers.distillation.train import main as train_main
from trainers.distillation.train import repeat_probe_prompt
from trainers.distillation.trainer import SaladDistillationTrainer

WORDS = "the quick brown fox jumps over the lazy dog while one two three four five six seven eight".split()


def speech_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        words = WORDS[i % 5 :] + WORDS[: i % 5]
        starts = [0.12 * k for k in range(len(words))]
        rows.append(
            {
                "text": " ".join(words),
                "audio": {"array": tone(0.12 * len(words) + 0.1, seed=i).tolist(), "sampling_rate": 16000},
                "words": words,
                "word_starts": starts,
                "word_ends": [s + 0.1 for s in starts],
            }
        )
    rows.append({"text": "plain text keeps the llm from forgetting", "audio": None, "words": None,
                 "word_starts": None, "word_ends": None})  # fmt: skip
    return rows


def config(tmp_path, **overrides) -> SaladDistillationConfig:
    values = dict(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=3, learning_rate=1e-2,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, text_span=[2, 4],
        speech_span=[2, 3], dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    values.update(overrides)
    return SaladDistillationConfig(**values)


def train_on_speech_rows(model, processor, args) -> tuple[SaladDistillationTrainer, list[float]]:
    """The trainer after training `model` on `speech_rows()`, and the losses it logged."""
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(speech_rows())
    )
    trainer.train()
    return trainer, logged(trainer, "loss")


def logged(trainer: SaladDistillationTrainer, key: str) -> list[float]:
    """Every value of `key` in the training logs (the entries that report a loss)."""
    return [entry[key] for entry in trainer.state.log_history if "loss" in entry]


def parameters(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict, module) -> bool:
    # bitwise: any change to a stored weight counts as training it
    return any(not torch.equal(before[name], p) for name, p in module.named_parameters() if name in before)


@pytest.mark.parametrize(
    ("train_llm", "teacher_mode", "llm_changes"),
    [("frozen", "shared", False), ("lora", "shared", True), ("full", "separate", True)],
)
def test_two_training_steps_per_teacher_mode(tmp_path, train_llm, teacher_mode, llm_changes):
    model, processor = build_tiny("whisper", "mlp")
    args = config(tmp_path, train_llm=train_llm, teacher_mode=teacher_mode)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(speech_rows())
    )
    encoder, adapter, llm = (
        parameters(model.audio_tower),
        parameters(model.adapter),
        parameters(model.language_model),
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert changed(adapter, model.adapter)
    assert not changed(encoder, model.audio_tower)
    assert changed(llm, model.language_model) == llm_changes
    logged = [entry for entry in trainer.state.log_history if "divergence" in entry]
    assert logged and all(entry["divergence"] >= 0 for entry in logged)
    if teacher_mode == "separate":
        assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_alpha_zero_trains_without_the_teacher(tmp_path, monkeypatch):
    """The ASR stage (alpha = 0, NLL of the transcript) never runs the teacher's forward pass."""
    model, processor = build_tiny("whisper", "mlp")
    trainer = SaladDistillationTrainer(
        model=model, args=config(tmp_path, alpha=0.0), processing_class=processor,
        train_dataset=Dataset.from_list(speech_rows()),
    )  # fmt: skip

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran at alpha = 0")

    monkeypatch.setattr(trainer, "teacher_hidden_states", no_teacher)
    adapter = parameters(model.adapter)
    trainer.train()
    assert trainer.state.global_step == 2 and changed(adapter, model.adapter)
    logged = [entry for entry in trainer.state.log_history if "nll" in entry]
    assert logged and all(entry["nll"] > 0 and "divergence" not in entry for entry in logged)


def test_streaming_dataset_trains(tmp_path):
    """An `IterableDataset` (what `streaming=True` gives) goes through the same collator and loss."""
    model, processor = build_tiny("whisper", "mlp")
    rows = Dataset.from_list(speech_rows()).to_iterable_dataset()
    trainer = SaladDistillationTrainer(
        model=model, args=config(tmp_path), processing_class=processor, train_dataset=rows
    )
    adapter = parameters(model.adapter)
    trainer.train()
    assert trainer.state.global_step == 2 and changed(adapter, model.adapter)


def test_shared_teacher_is_the_original_llm_under_lora(tmp_path):
    """With LoRA switched off the shared teacher's hidden states equal the untouched LLM's."""
    model, processor = build_tiny("whisper", "mlp")
    reference = build_tiny("whisper", "mlp")[0].language_model
    args = config(tmp_path, train_llm="lora", max_steps=1)
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(speech_rows())
    )
    trainer.train()
    batch = trainer.data_collator(speech_rows()[:2])
    hidden = trainer.teacher_hidden_states(model, batch["teacher_input_ids"], batch["teacher_attention_mask"])
    with torch.no_grad():
        expected = reference.get_decoder()(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).last_hidden_state
    torch.testing.assert_close(hidden, expected)


def test_separate_learning_rates_for_adapter_and_llm(tmp_path):
    model, processor = build_tiny("whisper", "mlp")
    args = config(
        tmp_path,
        train_llm="full",
        teacher_mode="separate",
        adapter_learning_rate=1e-3,
        llm_learning_rate=5e-5,
    )
    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(speech_rows())
    )
    optimizer = trainer.create_optimizer()
    adapter_ids = {id(p) for p in model.adapter.parameters()}
    for group in optimizer.param_groups:
        expected = 1e-3 if all(id(p) in adapter_ids for p in group["params"]) else 5e-5
        assert group["lr"] == expected


class StopAt(TrainerCallback):
    """Interrupts training after `step` optimizer steps, as a crash or a preemption would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_gives_the_same_weights(tmp_path):
    """4 steps straight == 2 steps, interrupted, then resumed from the checkpoint for 2 more."""
    rows = Dataset.from_list(speech_rows())

    def run(output, resume=None, callbacks=()):
        model, processor = build_tiny("whisper", "mlp")
        args = config(output, max_steps=4, save_strategy="steps", save_steps=2)
        trainer = SaladDistillationTrainer(
            model=model, args=args, processing_class=processor, train_dataset=rows, callbacks=list(callbacks)
        )
        trainer.train(resume_from_checkpoint=resume)
        return model, trainer

    straight, _ = run(tmp_path / "a")
    run(tmp_path / "b", callbacks=[StopAt(2)])
    resumed, trainer = run(tmp_path / "b", resume=str(tmp_path / "b" / "out" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    for (name, p), q in zip(straight.adapter.named_parameters(), resumed.adapter.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_loss_implementations_train_alike(tmp_path):
    """The same 4 steps (same seed, full fine-tuning: the LM head trains too) with each `loss_implementation`
    give the same losses (rtol 1e-4) and weights (atol 1e-4; at lr 1e-2 Adam's normalization turns the float
    summation-order differences of tiny gradients into weight differences of about 3e-5)."""

    def run(implementation):
        model, processor = build_tiny("whisper", "mlp")
        args = config(tmp_path / implementation, max_steps=4, train_llm="full", teacher_mode="separate",
                      loss_implementation=implementation, loss_chunk_size=5)  # fmt: skip
        return train_on_speech_rows(model, processor, args)[1], model

    reference_losses, reference = run("materialized")
    for implementation in ("fused", "recompute"):
        losses, model = run(implementation)
        assert losses == pytest.approx(
            reference_losses, rel=float_tolerance(torch.float32, OTHER_PATH_ULPS)["rtol"]
        )
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert_close_in_dtype(p, q, ulps=OTHER_PATH_ULPS, msg=f"{implementation}: {name}")


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, processor = build_tiny("whisper", "mlp")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    with open(root / "speech.jsonl", "w") as f:
        for row in speech_rows():
            if row["audio"] is not None:
                f.write(json.dumps(row) + "\n")
    with open(root / "text.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"text only row number {i} about foxes and dogs"}) + "\n")
    (root / "config.yaml").write_text(
        f"model_name_or_path: {root / 'model'}\n"
        f"data_files: [{root / 'speech.jsonl'}]\n"
        f"text_data_files: [{root / 'text.jsonl'}]\n"
        "max_steps: 2\nper_device_train_batch_size: 2\nlearning_rate: 0.001\nreport_to: []\n"
        "save_strategy: 'no'\nuse_cpu: true\ntext_span: [2, 4]\nspeech_span: [2, 3]\nlogging_steps: 1\n"
    )
    return root


def test_cli_with_yaml_config_and_flag_override(cli_setup, tmp_path):
    out = tmp_path / "run"
    train_main(["--config", str(cli_setup / "config.yaml"), "--output_dir", str(out), "--max_steps", "1"])
    state = (
        json.loads((out / "trainer_state.json").read_text())
        if (out / "trainer_state.json").exists()
        else None
    )
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    assert state is None or state["global_step"] == 1


TRAINING_CONFIGS = sorted(
    path
    for path in Path(__file__).parent.parent.glob("configs/**/*.yaml")
    if path.parent.name != "accelerate"  # accelerate's own configs
    and not path.name.startswith(("eval", "select"))  # parsed in test_eval.py / test_active_selection.py
)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_parse(path):
    """Every training config in configs/ parses into the CLI's dataclasses (no model is loaded; GPU configs get
    `--bf16 false` here because TrainingArguments refuses bf16 on a machine without a GPU)."""
    parser = TrlParser((SaladModelArguments, SaladDataArguments, SaladDistillationConfig))
    model_args, data_args, training_args = parser.parse_args_and_config(
        args=["--config", str(path), "--bf16", "false", "--use_cpu", "true"]
    )
    # SALAD's alpha is 1; the shipped recipe's LoRA stage adds the transcript's NLL to the KL.
    expected_alpha = (
        0.5 if path.relative_to(path.parents[1]).as_posix() == "embedded-default/stage1-lora.yaml" else 1.0
    )
    assert training_args.alpha == expected_alpha
    if training_args.objective == "choice":  # experiment 31's LoRA-only recipe
        assert not training_args.train_adapter and training_args.train_llm == "lora"
    assert model_args.model_name_or_path or model_args.language_model


def test_text_only_rows_get_a_length_when_training_groups_rows_by_length(tmp_path):
    """Grouping by length sorts every row by `length_column_name`: a text-only row mixed in gets the seconds it
    would take to say (it has no audio), not a null that the sampler cannot sort."""
    speech, text = tmp_path / "speech.jsonl", tmp_path / "text.jsonl"
    speech.write_text("".join(json.dumps({"text": f"spoken row {i}", "audio": f"{i}.wav", "duration": 1.5 + i}) + "\n"
                              for i in range(6)))  # fmt: skip
    text.write_text("".join(json.dumps({"text": "five words in this row"}) + "\n" for _ in range(6)))
    data_args = SaladDataArguments(data_files=[str(speech)], text_data_files=[str(text)])
    training_args = SaladDistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, text_only_ratio=0.5, report_to=[],
        train_sampling_strategy="group_by_length", length_column_name="duration",
    )  # fmt: skip
    rows = list(build_train_dataset(data_args, training_args))
    text_rows = [row for row in rows if row["audio"] is None]
    assert text_rows and all(row["duration"] == speaking_seconds(row["text"]) == 2.0 for row in text_rows)
    assert all(isinstance(row["duration"], float) for row in rows)


def test_max_train_samples_draws_the_same_rows_whatever_the_seed(tmp_path):
    """A subset for runs of several epochs: the same rows under every training seed (so their cached transcripts
    serve every run), drawn from all the files, and refused when larger than the data."""
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps({"text": f"{name} row {i}", "audio": f"{i}.wav"}) + "\n"
                                     for i in range(10)))  # fmt: skip

    def texts(seed: int, count: int) -> list[str]:
        args = SaladDistillationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], seed=seed)
        data_args = SaladDataArguments(data_files=[str(f) for f in files], max_train_samples=count)
        return [row["text"] for row in build_train_dataset(data_args, args)]

    subset = texts(seed=0, count=8)
    assert len(set(subset)) == 8 and subset == texts(seed=1, count=8)
    assert {text[0] for text in subset} == {"a", "b"}
    with pytest.raises(ValueError, match="max_train_samples=21 but the speech data has 20 rows"):
        texts(seed=0, count=21)


def test_speech_rows_without_a_length_are_refused_when_training_groups_rows_by_length(tmp_path):
    """A file whose rows lack `duration` (recorded speech next to TTS rows) would reach the length-grouped sampler
    as nulls and fail there with a bare TypeError; it is refused up front, with the count and what to do."""
    timed, untimed = tmp_path / "timed.jsonl", tmp_path / "untimed.jsonl"
    timed.write_text(
        "".join(
            json.dumps({"text": f"row {i}", "audio": f"{i}.wav", "duration": 1.0}) + "\n" for i in range(4)
        )
    )
    untimed.write_text(
        "".join(json.dumps({"text": f"row {i}", "audio": f"{i}.wav"}) + "\n" for i in range(3))
    )
    training_args = SaladDistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[],
        train_sampling_strategy="group_by_length", length_column_name="duration",
    )  # fmt: skip
    with pytest.raises(ValueError, match="3 of 7 speech rows have no 'duration'"):
        build_train_dataset(SaladDataArguments(data_files=[str(timed), str(untimed)]), training_args)
    with pytest.raises(ValueError, match="which the speech rows lack"):
        build_train_dataset(SaladDataArguments(data_files=[str(untimed)]), training_args)
    training_args.train_sampling_strategy = "random"
    assert (
        len(build_train_dataset(SaladDataArguments(data_files=[str(timed), str(untimed)]), training_args))
        == 7
    )


@pytest.mark.parametrize(
    ("chat_format", "probe_chat", "expected"),
    [(False, None, False), (True, None, True), (False, True, True), (True, False, False)],
)
def test_the_repeat_probe_asks_in_chat_when_probe_chat_says_so(tmp_path, chat_format, probe_chat, expected):
    """A run that mixes chat repeat rows into interleaved rows (chat_format off) can still probe the chat repeat."""
    training_args = SaladDistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], chat_format=chat_format, probe_chat=probe_chat,
        interleave_probability=0.0, chat_instruction="Say it again.",
    )  # fmt: skip
    assert repeat_probe_prompt(training_args) == RepeatPrompt(chat=expected, instruction="Say it again.")
