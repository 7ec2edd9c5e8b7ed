"""`build` -> `salad-push --dry_run` -> `verify`: the published folder loads and answers where salad cannot be
imported; and verify's own checks catch what they are there to catch."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import build_tiny

from hub_scripts import build, push, verify
from modeling_salad import SaladForConditionalGeneration, SaladProcessor, SaladSpeechToTextPipeline

REPO = "someone/salad-tiny"


@pytest.fixture(scope="module")
def built(component_checkpoints, tmp_path_factory):
    output = tmp_path_factory.mktemp("built")
    build.main(
        ["--audio_encoder", str(component_checkpoints / "whisper"), "--language_model", str(component_checkpoints / "llm"),
         "--adapter_type", "transformer", "--adapter_stack_factor", "2", "--adapter_hidden_size", "32",
         "--adapter_intermediate_size", "48", "--adapter_num_layers", "2", "--adapter_num_attention_heads", "4",
         "--adapter_num_key_value_heads", "2", "--output_dir", str(output)]
    )  # fmt: skip
    return output


def in_process_answer(folder, max_new_tokens: int = 8) -> str:
    model = SaladForConditionalGeneration.from_pretrained(folder).eval()
    pipe = SaladSpeechToTextPipeline(model=model, processor=SaladProcessor.from_pretrained(folder))
    clip = {"array": verify.probe_clip(), "sampling_rate": verify.PROBE_SAMPLING_RATE}
    return pipe(clip, prompt=verify.PROBE_PROMPT, max_new_tokens=max_new_tokens)["generated_text"]


def test_built_and_dry_run_folder_loads_and_answers_without_salad(built, tmp_path):
    folder = tmp_path / "to-upload"
    push.main(["--model_name_or_path", str(built), "--repo_id", REPO, "--dry_run", str(folder)])
    report = verify.verify(str(folder), work_dir=tmp_path / "work")
    assert report.ok, json.dumps(report.to_dict(), indent=2)
    names = [check.name for check in report.checks]
    assert names == [
        "safetensors_only", "remote_code", "model_card", "salad_blocked", "load_remote_code", "pipeline_answer"
    ]  # fmt: skip
    assert report.check("load_remote_code").detail.startswith(
        "SaladForConditionalGeneration from transformers_modules"
    )
    # the fresh process answers exactly what salad itself answers with the same weights
    assert report.check("pipeline_answer").detail == in_process_answer(folder)


def test_lora_adapter_and_shards_pass_verify(tmp_path):
    from peft import LoraConfig

    model, processor = build_tiny("whisper", "mlp", seed=2)
    model.add_lora_to_language_model(LoraConfig(r=2, lora_alpha=4))
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    folder = tmp_path / "to-upload"
    push.main(
        ["--model_name_or_path", str(tmp_path / "checkpoint"), "--repo_id", REPO, "--dry_run", str(folder),
         "--no_merge_lora", "--max_shard_size", "100KB"]
    )  # fmt: skip
    report = verify.verify(str(folder), work_dir=tmp_path / "work")
    assert report.ok, json.dumps(report.to_dict(), indent=2)
    assert report.check("shard_index").passed and report.check("lora_adapter_answer").passed


def test_file_checks_catch_pickles_broken_indexes_missing_code_and_bad_cards(built, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((built / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "gone.safetensors"}})
    )
    (folder / "README.md").write_text("---\nmodel-index: [{name: x}]\n---\nhi\n")
    checks = {c.name: c for c in [*verify.check_weights(folder), verify.check_remote_code(folder)]}
    checks["model_card"] = verify.check_card(folder)
    assert not checks["safetensors_only"].passed and "pytorch_model.bin" in checks["safetensors_only"].detail
    assert not checks["shard_index"].passed
    assert not checks["remote_code"].passed and "modeling_salad.py" in checks["remote_code"].detail
    assert not checks["model_card"].passed


def test_a_config_without_our_any_to_any_pipeline_fails_the_code_check(built, tmp_path):
    """A checkpoint saved before issue 31 names no `any-to-any` pipeline: transformers' own would serve it, which
    cannot batch clips of different lengths."""
    folder = tmp_path / "old-config"
    shutil.copytree(built, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["custom_pipelines"]["any-to-any"]
    (folder / "config.json").write_text(json.dumps(config))
    check = verify.check_remote_code(folder)
    assert not check.passed and "any-to-any" in check.detail


def test_a_checkpoint_with_pickle_files_is_never_run(built, tmp_path, monkeypatch):
    """Once the file check finds pickle files, verify stops: neither the remote code nor the weights are loaded."""
    folder = tmp_path / "pickled"
    shutil.copytree(built, folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the checkpoint's code was run")

    monkeypatch.setattr(verify, "check_in_fresh_process", must_not_run)
    monkeypatch.setattr(verify, "check_remote_code", must_not_run)
    report = verify.verify(str(folder), work_dir=tmp_path / "work")
    assert not report.ok and not report.check("code_not_run").passed


def test_main_exits_non_zero_on_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        verify.main(["--source", str(tmp_path / "empty"), "--work_dir", str(tmp_path / "work")])
    assert exit_info.value.code == 1


def test_hub_sources_need_a_pinned_commit(tmp_path):
    with pytest.raises(ValueError, match="full commit hash"):
        verify.verify(REPO, revision="main", work_dir=tmp_path / "work")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "left-over").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        verify.verify(REPO, revision="0" * 40, work_dir=tmp_path / "busy")
