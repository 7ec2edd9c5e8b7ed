"""Two processes train like one: `accelerate launch --num_processes 2` on CPU (gloo) with the shipped DDP and FSDP
configs, on a tiny random model of the paper's shapes (Mimi encoder -> causal Transformer adapter -> Qwen2 LLM, fully
fine-tuned against a frozen copy of itself). Each run trains, saves a checkpoint, resumes from it in a new process,
and must end where one process with the same global batch ends: the same rows, the same losses, the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import OTHER_PATH_ULPS, float_tolerance, make_tokenizer, tiny_audio_config, tone
from safetensors.torch import load_file
from transformers import EncodecFeatureExtractor, Qwen2Config

from modeling_salad import SaladConfig, SaladForConditionalGeneration, SaladProcessor

ROOT = Path(__file__).parent.parent
SR = 24000
STEPS, SAVE_AT, GLOBAL_BATCH = 4, 2, 4
WORDS = "speech and text should be understood alike by one model".split()
BAD_ROWS = (5, 10)  # rows whose word timestamps are broken: skipped by the collator and counted

pytestmark = pytest.mark.slow


def paper_shaped_tiny() -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """The paper's architecture at toy width: a Mimi encoder, the causal Transformer adapter and a Qwen2 LLM."""
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    text_config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )  # fmt: skip
    config = SaladConfig(
        audio_config=tiny_audio_config("mimi"), text_config=text_config.to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|audio|>"), adapter_type="transformer",
        adapter_stack_factor=1, adapter_hidden_size=32, adapter_intermediate_size=48, adapter_num_layers=2,
        adapter_num_attention_heads=4, adapter_num_key_value_heads=2,
    )  # fmt: skip
    model = SaladForConditionalGeneration(config).eval()
    processor = SaladProcessor(
        EncodecFeatureExtractor(feature_size=1, sampling_rate=SR), tokenizer,
        audio_length_spec=config.audio_length_spec.to_dict(),
    )  # fmt: skip
    return model, processor


def rows() -> list[dict]:
    out = []
    for i in range(4 * GLOBAL_BATCH):
        words = WORDS[i % 4 :] + WORDS[: i % 4]
        starts = [0.1 * k for k in range(len(words))]
        out.append({
            "text": " ".join(words),
            "audio": {"array": tone(0.1 * len(words) + 0.1, SR, seed=i).tolist(), "sampling_rate": SR},
            "words": words, "word_starts": starts, "word_ends": [s + 0.08 for s in starts],
        })  # fmt: skip
    for index in BAD_ROWS:
        out[index]["word_ends"] = out[index]["word_ends"][:-1]  # unequal lengths: a bad row
    return out


SETTINGS = {
    "alpha": 1.0, "teacher_mode": "separate", "train_llm": "full", "adapter_learning_rate": 1e-3,
    "llm_learning_rate": 1e-4, "learning_rate": 1e-4, "weight_decay": 0.1, "optim": "adamw_torch",
    "logging_steps": 1, "text_span": [2, 4], "speech_span": [2, 3], "seed": 0, "report_to": [], "use_cpu": True,
    "dataloader_num_workers": 0, "disable_tqdm": True, "max_bad_row_fraction": 0.5,
}  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TOLERANCE = float_tolerance(
    torch.float32, OTHER_PATH_ULPS
)  # another grouping of the same sums, then 4 Adam steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    model, processor = paper_shaped_tiny()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    with open(root / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows())
    run = {"model_name_or_path": str(root / "model"), "data_files": [str(root / "rows.jsonl")],
           "max_steps": STEPS, "save_strategy": "steps", "save_steps": SAVE_AT}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump({**SETTINGS, **run}))
    (root / "fsdp.json").write_text(
        json.dumps({**SETTINGS, "steps": STEPS, "save_at": SAVE_AT, "global_batch": GLOBAL_BATCH})
    )
    return root


def run(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-6000:]


def salad_train(setup: Path, output_dir: Path, processes: int, *extra: str) -> dict[int, dict]:
    """One `salad-train` run, through `accelerate launch` with the DDP config for several processes (without
    `--cpu`, which would make accelerate start one process); its logged steps."""
    command = ["-m", "trainers.distillation.train", "--config", str(setup / "config.yaml"), "--output_dir", str(output_dir),
               "--per_device_train_batch_size", str(GLOBAL_BATCH // processes), *extra]  # fmt: skip
    if processes > 1:
        command = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
                   "--num_processes", str(processes), "--mixed_precision", "no", "--num_machines", "1",
                   "--dynamo_backend", "no", *command]  # fmt: skip
    run(command)
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


def fsdp_train(setup: Path, output_dir: Path, processes: int, *extra: str) -> dict[int, float]:
    """One run of `tests/fsdp_worker.py` under torchrun (torch's `fully_shard` over gloo); its losses per step."""
    run(["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
         str(ROOT / "tests/fsdp_worker.py"), "--model", str(setup / "model"), "--rows", str(setup / "rows.jsonl"),
         "--config", str(setup / "fsdp.json"), "--output_dir", str(output_dir), *extra])  # fmt: skip
    return {int(step): loss for step, loss in json.loads((output_dir / "losses.json").read_text()).items()}


def assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    weights, reference = (
        load_file(run_dir / "model.safetensors"),
        load_file(reference_dir / "model.safetensors"),
    )
    assert weights.keys() == reference.keys()
    for key, value in weights.items():
        torch.testing.assert_close(value, reference[key], **TOLERANCE, msg=f"{run_dir.name}: {key}")


def test_ddp_two_processes_train_resume_and_match_one(setup):
    one = salad_train(setup, setup / "single", 1)
    two = salad_train(setup, setup / "ddp", 2)
    again = salad_train(
        setup, setup / "ddp-resumed", 2, "--resume_from_checkpoint", str(setup / f"ddp/checkpoint-{SAVE_AT}")
    )
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    # the resumed run started after its checkpoint: it never wrote the checkpoint it resumed from
    assert not (setup / f"ddp-resumed/checkpoint-{SAVE_AT}").exists()
    for step in one:
        # both processes' rows are counted: the same rows as one process with the same global batch
        assert two[step]["rows_seen"] == one[step]["rows_seen"] == step * GLOBAL_BATCH
        assert two[step]["bad_rows"] == one[step]["bad_rows"]
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=TOLERANCE["rtol"])
    assert one[STEPS]["bad_rows"] > 0, "the bad rows should have been drawn in these steps"
    for step in range(SAVE_AT + 1, STEPS + 1):  # the resumed run's counts go on from its checkpoint's
        assert (
            again[step]["rows_seen"] == two[step]["rows_seen"]
            and again[step]["bad_rows"] == two[step]["bad_rows"]
        )
        assert again[step]["loss"] == pytest.approx(two[step]["loss"], rel=TOLERANCE["rtol"])
    trained, initial = (
        load_file(setup / "single/model.safetensors"),
        load_file(setup / "model/model.safetensors"),
    )
    assert any(not torch.allclose(trained[key], initial[key], **TOLERANCE) for key in trained), (
        "nothing trained"
    )
    assert_same_weights(setup / "ddp", setup / "single")
    assert_same_weights(setup / "ddp-resumed", setup / "single")


CHOICE_SETTINGS = {
    "objective": "choice", "train_llm": "lora", "lora_r": 4, "teacher_mode": "shared", "train_adapter": True,
    "learning_rate": 1e-3, "optim": "adamw_torch", "per_device_train_batch_size": 4, "dataloader_drop_last": True,
    "max_steps": 2, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1, "seed": 0, "report_to": [],
    "use_cpu": True, "dataloader_num_workers": 0, "disable_tqdm": True,
}  # fmt: skip


def test_ddp_trains_the_choice_objective_as_one_process_accumulating_the_same_batches(setup, tmp_path):
    """objective="choice" with the adapter and LoRA training (the clips' and the text's forward pass share the
    parameters): two processes of 4 questions each step end where one process ends that accumulates the same two
    batches of 4 (a question's distractors come from its own batch, so the batches must match)."""
    questions = [
        {"text": f"what is thing {i}", "audio": {"array": tone(0.5 + 0.05 * i, SR, seed=i).tolist(), "sampling_rate": SR},
         "prompt": "Question: ", "continuation": f"\nAnswer: the {word} {i}", "answer": f"the {word} {i}"}
        for i, word in enumerate(WORDS * 2)
    ]  # fmt: skip
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in questions))
    config = {**CHOICE_SETTINGS, "model_name_or_path": str(setup / "model"),
              "data_files": [str(tmp_path / "questions.jsonl")]}  # fmt: skip
    (tmp_path / "choice.yaml").write_text(yaml.safe_dump(config))
    base = ["-m", "trainers.distillation.train", "--config", str(tmp_path / "choice.yaml")]
    run([*base, "--output_dir", str(tmp_path / "one"), "--gradient_accumulation_steps", "2"])
    run(["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
         "--num_processes", "2", "--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no",
         *base, "--output_dir", str(tmp_path / "two")])  # fmt: skip
    logs = {}
    for name in ("one", "two"):
        state = json.loads((tmp_path / name / "checkpoint-2" / "trainer_state.json").read_text())
        logs[name] = [entry for entry in state["log_history"] if "loss" in entry]
    assert (
        [entry["rows_seen"] for entry in logs["two"]]
        == [entry["rows_seen"] for entry in logs["one"]]
        == [8, 16]
    )
    for one, two in zip(logs["one"], logs["two"]):
        assert two["loss"] == pytest.approx(one["loss"], rel=TOLERANCE["rtol"])
        assert "text_choice_divergence" in two
    trained = load_file(tmp_path / "one/model.safetensors")
    initial = load_file(setup / "model/model.safetensors")
    assert any(not torch.allclose(trained[key], initial[key], **TOLERANCE) for key in initial), (
        "nothing trained"
    )
    assert_same_weights(tmp_path / "two", tmp_path / "one")


def test_fsdp2_two_processes_train_resume_and_match_one(setup):
    one = fsdp_train(setup, setup / "fsdp-single", 1)
    two = fsdp_train(setup, setup / "fsdp", 2)
    again = fsdp_train(
        setup, setup / "fsdp-resumed", 2, "--resume", str(setup / f"fsdp/checkpoint-{SAVE_AT}")
    )
    assert sorted(one) == sorted(two) == sorted(again) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=TOLERANCE["rtol"])
        assert again[step] == pytest.approx(one[step], rel=TOLERANCE["rtol"])
    assert not (setup / f"fsdp-resumed/checkpoint-{SAVE_AT}").exists()
    assert_same_weights(setup / "fsdp", setup / "fsdp-single")
    assert_same_weights(setup / "fsdp-resumed", setup / "fsdp-single")
