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
BAD_ROWS = 2  # rows whose word timestamps are broken: skipped by the collator and counted

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
    for row in out[:BAD_ROWS]:
        row["word_ends"] = row["word_ends"][:-1]  # unequal lengths: a bad row
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    model, processor = paper_shaped_tiny()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    with open(root / "rows.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows())
    (root / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(root / "model"),
                "data_files": [str(root / "rows.jsonl")],
                "alpha": 1.0,
                "teacher_mode": "separate",
                "train_llm": "full",
                "adapter_learning_rate": 1e-3,
                "llm_learning_rate": 1e-4,
                "learning_rate": 1e-4,
                "weight_decay": 0.1,
                "optim": "adamw_torch",
                "max_steps": STEPS,
                "save_strategy": "steps",
                "save_steps": SAVE_AT,
                "logging_steps": 1,
                "text_span": [2, 4],
                "speech_span": [2, 3],
                "seed": 0,
                "report_to": [],
                "use_cpu": True,
                "dataloader_num_workers": 0,
                "disable_tqdm": True,
                "max_bad_row_fraction": 0.5,
            }
        )  # fmt: skip
    )
    return root


def train(setup: Path, output_dir: Path, processes: int, accelerate_config: str | None, *extra: str) -> dict:
    """One `salad-train` run (launched through accelerate for several processes); its trainer state."""
    command = ["-m", "trainers.train", "--config", str(setup / "config.yaml"), "--output_dir", str(output_dir),
               "--per_device_train_batch_size", str(GLOBAL_BATCH // processes), *extra]  # fmt: skip
    if processes > 1:
        command = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / accelerate_config),
                   "--num_processes", str(processes), "--cpu", "--mixed_precision", "no", "--num_machines", "1",
                   "--dynamo_backend", "no", *command]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())


def step_logs(state: dict) -> dict[int, dict]:
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="module")
def single(setup):
    return train(setup, setup / "single", 1, None)


@pytest.mark.parametrize("accelerate_config", ["ddp.yaml", "fsdp.yaml"])
def test_two_processes_train_resume_and_match_one(setup, single, accelerate_config):
    name = accelerate_config.removesuffix(".yaml")
    state = train(setup, setup / name, 2, accelerate_config)
    resumed = train(
        setup, setup / f"{name}-resumed", 2, accelerate_config,
        "--resume_from_checkpoint", str(setup / name / f"checkpoint-{SAVE_AT}"),
    )  # fmt: skip
    one, two, again = step_logs(single), step_logs(state), step_logs(resumed)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    assert sorted(again) == list(range(SAVE_AT + 1, STEPS + 1))  # the resumed run starts after its checkpoint
    rtol = float_tolerance(torch.float32, OTHER_PATH_ULPS)["rtol"]
    for step in one:
        # both processes' rows are counted: the same rows as one process with the same global batch
        assert two[step]["rows_seen"] == one[step]["rows_seen"] == step * GLOBAL_BATCH
        assert two[step]["bad_rows"] == one[step]["bad_rows"]
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], rel=rtol)
    assert one[STEPS]["bad_rows"] > 0, "the bad rows should have been drawn in these steps"
    for step in again:
        assert again[step]["loss"] == pytest.approx(two[step]["loss"], rel=rtol)
    reference = load_file(setup / "single" / "model.safetensors")
    for run in (setup / name, setup / f"{name}-resumed"):
        weights = load_file(run / "model.safetensors")
        assert weights.keys() == reference.keys()
        for key, value in weights.items():
            torch.testing.assert_close(
                value,
                reference[key],
                **float_tolerance(torch.float32, OTHER_PATH_ULPS),
                msg=f"{run.name}: {key}",
            )
