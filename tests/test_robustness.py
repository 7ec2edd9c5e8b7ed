"""Nothing lost silently in training: bad rows counted in every dataloader setting, non-finite numbers caught
at once and never saved, and one seed that fixes every initial weight."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import build_tiny
from datasets import Dataset
from test_trainer import config, speech_rows

from trainers.distillation.data import SaladDistillationCollator
from trainers.distillation.train import complete_checkpoints, resolve_resume
from trainers.distillation.train import main as train_main
from trainers.distillation.trainer import SaladDistillationTrainer


def trainer_for(tmp_path, rows, **overrides):
    model, processor = build_tiny("whisper", "mlp")
    args = config(tmp_path, **{"max_steps": 3, **overrides})
    return SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=Dataset.from_list(rows)
    )


def all_finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("workers", [0, 1])
def test_a_loud_row_is_counted_as_bad_in_every_dataloader_setting(tmp_path, workers):
    """Samples around 1e30 are finite but would make features and loss non-finite: the row is refused and
    counted, also when a worker process collates (its counts travel with the batch)."""
    rows = [row for row in speech_rows() if row["audio"] is not None]
    rows[1]["audio"]["array"] = (np.asarray(rows[1]["audio"]["array"]) * 1e30).tolist()
    trainer = trainer_for(tmp_path, rows, dataloader_num_workers=workers, max_steps=4)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "bad_rows" in entry]
    assert logged and logged[-1]["bad_rows"] >= 1 and logged[-1]["rows_seen"] >= 8
    assert trainer._bad_row_reasons["audio is not usable"] >= 1
    assert all_finite(trainer.model)


@pytest.mark.parametrize(
    "defect",
    [
        {"word_starts": None},
        {"word_starts": [math.nan, 0.2, 0.4]},
        {"word_ends": math.nan},  # a NaN end somewhere
        {"word_ends": "missing"},
        {"word_starts": ["0.0", "0.2", "0.4"]},
        {"word_ends": [0.05, 0.1, 0.15], "word_starts": [0.1, 0.2, 0.3]},  # each word ends before it starts
    ],
    ids=["null-starts", "nan-start", "nan-end", "missing-ends", "string-times", "ends-before-starts"],
)
def test_broken_word_timestamps_are_bad_rows_not_crashes(whisper_salad, defect):
    _, processor = whisper_salad
    collator = SaladDistillationCollator(
        processor, interleave_probability=1.0, text_span=(1, 2), speech_span=(1, 2)
    )
    good = {"text": "one two three", "audio": {"array": np.zeros(8000, np.float32), "sampling_rate": 16000},
            "words": ["one", "two", "three"], "word_starts": [0.0, 0.2, 0.4], "word_ends": [0.15, 0.35, 0.45]}  # fmt: skip
    bad = dict(good)
    for key, value in defect.items():
        if value == "missing":
            del bad[key]
        elif value is not None and not isinstance(value, list):
            bad[key] = [*good[key][:-1], value]
        else:
            bad[key] = value
    batch = collator([good, bad])
    assert batch["input_ids"].shape[0] == 1 and batch["rows_in_batch"] == 2
    assert batch["bad_row_reasons"] == {"word timestamps": 1}


def nan_on_call(trainer, call: int):
    """Make the objective's loss NaN on its `call`-th evaluation (counting from 1)."""
    original, calls = trainer.objective_loss, []

    def objective_loss(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * math.nan if len(calls) == call else loss

    trainer.objective_loss = objective_loss


def test_a_nonfinite_loss_stops_the_run_with_the_step_and_the_batch(tmp_path):
    trainer = trainer_for(tmp_path, speech_rows())
    nan_on_call(trainer, 2)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss nan at step 1 on the batch \["):
        trainer.train()
    assert all_finite(trainer.model)


def test_skip_policy_drops_a_nonfinite_batch_and_counts_it(tmp_path):
    trainer = trainer_for(tmp_path, speech_rows(), nonfinite_policy="skip", max_steps=4)
    nan_on_call(trainer, 2)
    trainer.train()
    assert trainer.state.global_step == 4
    assert trainer.state.log_history[-2]["skipped_batches"] == 1
    assert all_finite(trainer.model)


def test_a_nonfinite_gradient_is_caught_and_its_update_dropped(tmp_path):
    trainer = trainer_for(tmp_path, speech_rows(), nonfinite_policy="skip", max_steps=1)
    weight = next(trainer.model.adapter.parameters())
    before = weight.detach().clone()
    weight.register_hook(lambda grad: grad * math.inf)
    trainer.train()
    assert trainer._skipped_steps == 1 and trainer.state.log_history[-2]["skipped_steps"] == 1
    # bitwise: the contract is that the stored weight was not touched (the optimizer got no gradient)
    assert torch.equal(weight.detach(), before)


def test_under_gradient_accumulation_a_nonfinite_loss_drops_only_its_micro_batch(tmp_path):
    trainer = trainer_for(
        tmp_path, speech_rows(), nonfinite_policy="skip", max_steps=1, gradient_accumulation_steps=2
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    nan_on_call(trainer, 2)
    trainer.train()
    assert trainer._skipped_batches == 1 and trainer._skipped_steps == 0
    changed = [
        name
        for name, p in trainer.model.named_parameters()
        if name in before and not torch.equal(p, before[name])
    ]
    assert changed, "the step's other micro-batch should still update the weights"
    assert all_finite(trainer.model)


def test_under_gradient_accumulation_a_nonfinite_gradient_drops_the_whole_step(tmp_path):
    trainer = trainer_for(
        tmp_path, speech_rows(), nonfinite_policy="skip", max_steps=1, gradient_accumulation_steps=2
    )
    weight = next(trainer.model.adapter.parameters())
    before = weight.detach().clone()
    calls = []

    def infinite_on_the_first_micro_batch(grad):
        calls.append(1)
        return grad * math.inf if len(calls) == 1 else grad

    weight.register_hook(infinite_on_the_first_micro_batch)
    trainer.train()
    assert len(calls) == 2 and trainer._skipped_steps == 1 and trainer._skipped_batches == 0
    assert torch.equal(weight.detach(), before)  # bitwise: the stored weight was not touched


def test_nonfinite_weights_are_never_saved(tmp_path):
    trainer = trainer_for(tmp_path, speech_rows())
    with torch.no_grad():
        next(trainer.model.adapter.parameters())[0] = math.nan
    with pytest.raises(FloatingPointError, match="Refusing to save non-finite weights"):
        trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "model.safetensors").exists()


def test_the_same_command_and_seed_give_the_same_weights(tmp_path, component_checkpoints):
    """A freshly built adapter and LoRA are drawn after `--seed` takes effect: two runs of one command match
    bit for bit, and another seed gives other weights (so the comparison can fail)."""
    data = tmp_path / "speech.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in speech_rows() if row["audio"] is not None))

    def run(name: str, seed: int) -> str:
        output = tmp_path / name
        train_main([
            "--audio_encoder", str(component_checkpoints / "whisper"), "--language_model", str(component_checkpoints / "llm"),
            "--adapter_intermediate_size", "24", "--data_files", str(data), "--train_llm", "lora", "--lora_r", "2",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--seed", str(seed),
            "--text_span", "2", "4", "--speech_span", "2", "3", "--save_strategy", "no", "--report_to", "none",
            "--use_cpu", "true", "--dataloader_num_workers", "0", "--output_dir", str(output),
        ])  # fmt: skip
        return hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest()

    first = run("a", seed=3)
    assert run("b", seed=3) == first
    assert run("c", seed=4) != first


def test_a_run_killed_during_a_save_resumes_from_its_latest_complete_checkpoint(tmp_path):
    """Checkpoints appear only once complete: a run killed while writing checkpoint-4 leaves checkpoint-2 and a
    hidden partial folder; `latest` resumes from checkpoint-2 and ends with the weights of a straight run."""
    rows = speech_rows()

    def run(folder, resume=None, crash_at=None):
        trainer = trainer_for(folder, rows, max_steps=4, save_strategy="steps", save_steps=2)
        if crash_at is not None:
            save_rng_state = trainer._save_rng_state  # written after the weights and the optimizer

            def killed(output_dir):
                if trainer.state.global_step == crash_at:
                    raise KeyboardInterrupt("killed during a save")
                save_rng_state(output_dir)

            trainer._save_rng_state = killed
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=4)
    output = tmp_path / "b" / "out"
    assert [path.name for path in complete_checkpoints(output)] == ["checkpoint-2"]
    assert not (output / "checkpoint-4").exists() and (output / ".checkpoint-4.partial").exists()
    resumed = run(tmp_path / "b", resume=resolve_resume("latest", str(output)))
    for (name, p), q in zip(straight.adapter.named_parameters(), resumed.adapter.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    assert [path.name for path in complete_checkpoints(output)] == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume("latest", str(tmp_path / "empty"))
    assert resolve_resume("runs/x/checkpoint-7", str(output)) == "runs/x/checkpoint-7"
