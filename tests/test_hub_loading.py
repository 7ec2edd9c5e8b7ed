"""Auto classes, trust_remote_code loading without salad installed, and both pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from conftest import (
    BLOCK_SALAD_IMPORTS,
    OTHER_INSTANCE_ULPS,
    assert_close_in_dtype,
    build_tiny,
    decoder_tiny,
    tone,
)
from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoProcessor, pipeline
from transformers.pipelines.any_to_any import AnyToAnyPipeline

from modeling_salad import (
    PIPELINE_TASK,
    SaladForConditionalGeneration,
    SaladProcessor,
    SaladSpeechToTextPipeline,
)


@pytest.fixture(scope="module", params=["transformer", "whisper_decoder"])
def saved_checkpoint(tmp_path_factory, request):
    model, processor = (
        decoder_tiny() if request.param == "whisper_decoder" else build_tiny("whisper", request.param)
    )
    path = tmp_path_factory.mktemp("salad-tiny")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def test_auto_classes_resolve_salad(saved_checkpoint):
    path, model, _ = saved_checkpoint
    assert type(AutoConfig.from_pretrained(path)).__name__ == "SaladConfig"
    assert isinstance(AutoModel.from_pretrained(path), SaladForConditionalGeneration)
    assert isinstance(AutoModelForMultimodalLM.from_pretrained(path), SaladForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(path), SaladProcessor)


def test_checkpoint_carries_code_and_auto_map(saved_checkpoint):
    path, _, _ = saved_checkpoint
    config = json.loads((path / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForMultimodalLM"}
    assert config["custom_pipelines"][PIPELINE_TASK]["impl"] == "pipeline_salad.SaladSpeechToTextPipeline"
    assert config["custom_pipelines"]["any-to-any"]["impl"] == "pipeline_salad.SaladAnyToAnyPipeline"
    modules = ["configuration_salad", "modeling_salad", "adapters_salad", "checkpoint_salad", "lora_salad"]
    for name in [f"{module}.py" for module in [*modules, "processing_salad", "pipeline_salad"]]:
        assert (path / name).is_file(), name
    processor_config = json.loads((path / "processor_config.json").read_text())
    assert "AutoProcessor" in processor_config["auto_map"]


REMOTE_SCRIPT = BLOCK_SALAD_IMPORTS + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from transformers import AutoModel, AutoProcessor, pipeline

    path, inputs_file = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    clip = np.load(inputs_file)["clip"]
    inputs = processor(text="Hear <|audio|> now", audio=clip, sampling_rate=16000)
    with torch.no_grad():
        logits = model(**inputs).logits
    speech = pipeline("salad-speech-to-text", model=path, trust_remote_code=True)
    answer = speech({"array": clip, "sampling_rate": 16000}, prompt="Repeat.", max_new_tokens=4)
    any_to_any = pipeline("any-to-any", model=path, trust_remote_code=True)
    chat = [{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": "Hi"}]}]
    reply = any_to_any(text=chat, max_new_tokens=4, return_full_text=False)
    print(json.dumps({
        "model_module": type(model).__module__,
        "logits": logits[0, -1, :8].tolist(),
        "answer": answer["generated_text"],
        "reply": reply[0]["generated_text"],
    }))
    """
)


def test_fresh_process_loads_with_trust_remote_code_without_salad(saved_checkpoint, tmp_path):
    path, model, processor = saved_checkpoint
    clip = tone(0.8)
    np.savez(tmp_path / "inputs.npz", clip=clip)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(path), str(tmp_path / "inputs.npz")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_module"].startswith("transformers_modules")
    with torch.no_grad():
        expected = model(**processor(text="Hear <|audio|> now", audio=clip)).logits[0, -1, :8]
    assert_close_in_dtype(torch.tensor(report["logits"]), expected, ulps=OTHER_INSTANCE_ULPS)
    assert isinstance(report["answer"], str)
    assert isinstance(report["reply"], str)


@pytest.fixture(scope="module")
def speech_pipeline(saved_checkpoint):
    """In-process pipeline on our own class (`pipeline(task, model=dir, trust_remote_code=True)` is covered by
    the fresh-process test)."""
    _, model, processor = saved_checkpoint
    return SaladSpeechToTextPipeline(model=model, processor=processor)


def test_custom_pipeline_accepts_path_bytes_arrays_and_lists(speech_pipeline, tmp_path):
    clip = tone(0.6)
    path = tmp_path / "clip.wav"
    soundfile.write(path, clip, 16000)
    kwargs = {"max_new_tokens": 3, "prompt": "What was said?"}
    by_path = speech_pipeline(str(path), **kwargs)
    by_bytes = speech_pipeline(path.read_bytes(), **kwargs)
    by_array = speech_pipeline(clip, sampling_rate=16000, **kwargs)
    assert isinstance(by_path["generated_text"], str)
    assert by_path == by_bytes == by_array
    batch = speech_pipeline([str(path), {"array": clip, "sampling_rate": 16000}], **kwargs)
    assert [item["generated_text"] for item in batch] == [by_path["generated_text"]] * 2


def test_custom_pipeline_resamples_and_downmixes(speech_pipeline, saved_checkpoint):
    _, model, processor = saved_checkpoint
    clip_8k = tone(0.6, 8000)
    stereo = np.stack([clip_8k, clip_8k])  # [channels, samples]
    answer = speech_pipeline(stereo, sampling_rate=8000, max_new_tokens=3)
    from modeling_salad import resample

    expected_inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio", "audio": resample(clip_8k, 8000, 16000)}]}],
        tokenize=True,
        return_dict=True,
        add_generation_prompt=True,
        return_tensors="pt",
    )
    generated = model.generate(**expected_inputs, max_new_tokens=3, do_sample=False)
    expected = processor.decode(
        generated[0, expected_inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert answer["generated_text"] == expected


def test_custom_pipeline_array_without_rate_is_refused(speech_pipeline):
    with pytest.raises(ValueError, match="sampling rate"):
        speech_pipeline(tone(0.5))


def test_any_to_any_pipeline_answers_chat_with_audio(saved_checkpoint):
    path, _, _ = saved_checkpoint
    pipe = pipeline("any-to-any", model=str(path), trust_remote_code=True)
    assert type(pipe).__name__ == "SaladAnyToAnyPipeline"
    chat = [
        {"role": "user", "content": [{"type": "audio", "audio": tone(0.5)}, {"type": "text", "text": "Hi"}]}
    ]
    reply = pipe(text=chat, max_new_tokens=4, return_full_text=False)
    assert isinstance(reply[0]["generated_text"], str)


def test_empty_inputs_are_refused_with_a_clear_error(speech_pipeline, saved_checkpoint):
    """An empty list to either pipeline, or an empty prompt with no audio, is refused before generation."""
    path, _, processor = saved_checkpoint
    with pytest.raises(ValueError, match="empty list"):
        speech_pipeline([])
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match=r"Sample\(s\) \[0\] have no tokens"):
        processor(text="")
    any_to_any = pipeline("any-to-any", model=str(path), trust_remote_code=True)
    with pytest.raises(ValueError, match="no tokens|empty"):
        any_to_any(text="", max_new_tokens=2)
    with pytest.raises(ValueError, match="empty list"):
        any_to_any(text=[])
    hello = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    with pytest.raises(ValueError, match=r"Chat\(s\) \[0\] have no messages"):
        any_to_any(text=[[]])
    with pytest.raises(ValueError, match=r"Chat\(s\) \[1\] have no messages"):
        any_to_any(text=[hello, []])


def test_importing_salad_leaves_the_any_to_any_task_to_transformers(saved_checkpoint):
    """Nothing is registered globally for `any-to-any`: a model object (whose task is looked up in transformers'
    registry, not in a checkpoint's config) gets transformers' class, as every other model does."""
    _, model, processor = saved_checkpoint
    assert type(pipeline("any-to-any", model=model, processor=processor)) is AnyToAnyPipeline


def test_input_past_the_llm_context_is_refused_before_generation(speech_pipeline, monkeypatch):
    monkeypatch.setattr(speech_pipeline.model.config.text_config, "max_position_embeddings", 16)
    with pytest.raises(ValueError, match=r"tokens \(2 s of audio\), past the LLM's 16-token context"):
        speech_pipeline(tone(2.0), sampling_rate=16000, max_new_tokens=2)
