"""`salad-eval` on speech LLMs that are not SALAD models (`eval.speech_llms`): tiny random Qwen2-Audio, Granite Speech
and Voxtral checkpoints built in code (`tiny_speech_llms`), run end to end offline; the leaderboard view
(`--compare`); and the errors for models it cannot hear with."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import OTHER_PATH_ULPS, assert_close_in_dtype, tone
from tiny_speech_llms import FAMILIES, build, without_torchaudio

from eval import harness
from eval.gap import gap_report
from eval.run import main
from eval.scoring import ANSWER_CUE, option_token_ids
from eval.speech_llms import SpeechLLM, audio_turn_of, clip_as_wav_base64, is_salad_checkpoint
from eval.tasks import load_offline_tasks
from hub_scripts.model_card import eval_results_from_gap_report


@pytest.fixture(scope="module")
def tiny_speech_llms(tmp_path_factory):
    """Each family's (speech LLM folder, base LLM folder), built once for the module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        without_torchaudio(monkeypatch)
        root = tmp_path_factory.mktemp("speech-llms")
        return {family: build(family, root / family) for family in FAMILIES}


@pytest.fixture(autouse=True)
def granite_without_torchaudio(monkeypatch):
    without_torchaudio(monkeypatch)


@pytest.fixture(scope="module")
def recorded_tasks(tmp_path_factory):
    """A task file of four built-in items, each with its own recording (`audio_path`): tones of different lengths."""
    folder = tmp_path_factory.mktemp("recorded")
    lines = []
    for index, item in enumerate(load_offline_tasks()[:4]):
        path = folder / f"{item.id}.wav"
        sf.write(path, tone(0.4 + 0.3 * index, freq=300 + 100 * index), 16000)
        lines.append(json.dumps({**item.to_dict(), "audio_path": str(path)}))
    tasks = folder / "recorded.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    return tasks


def documented_inputs(family: str, processor, question: str | None, clip: np.ndarray | None) -> dict:
    """The family's inputs for `Question: <question or clip>` as its model card builds them, independently of
    `SpeechLLM` (by the other of the two conventions where the family allows both)."""
    text = "Question: " + (question or "")
    if family == "qwen2_audio":  # the chat template renders the audio markers; the processor expands them
        content = [{"type": "text", "text": text}, *([{"type": "audio"}] if clip is not None else [])]
        rendered = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return processor(text=rendered, audio=None if clip is None else [clip], return_tensors="pt")
    if family == "granite_speech":
        rendered = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": text + ("<|audio|>" if clip is not None else "")}],
            tokenize=False,
            add_generation_prompt=True,
        )
        audio = None if clip is None else torch.from_numpy(clip)
        return processor(text=rendered, audio=audio, add_special_tokens=False, return_tensors="pt")
    content = [{"type": "text", "text": text}]
    if clip is not None:
        content.append({"type": "audio", "base64": clip_as_wav_base64(clip, 16000)})
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
    )


HEARD_AND_READ = [
    *((family, "heard", 0.9) for family in FAMILIES),
    *((family, "read", None) for family in FAMILIES),
    ("voxtral", "heard", 31.0),  # two 30 s chunks, each option's row holding both, in order
]


@pytest.mark.parametrize(("family", "question", "seconds"), HEARD_AND_READ)
def test_an_option_scores_its_log_probability_after_the_question(family, question, seconds, tiny_speech_llms):
    """The scoring path against a hand computation on one item: the family's own inputs, the cue and the option
    appended, one unpadded forward pass, the option tokens' log-probabilities summed (and averaged)."""
    llm = SpeechLLM.from_pretrained(str(tiny_speech_llms[family][0]))
    item = load_offline_tasks()[0]
    if question == "heard":
        clip = tone(seconds)
        scores = llm.score_speech_items([item], [clip], shots="")[0]
        inputs = dict(documented_inputs(family, llm.processor, None, clip))
    else:
        scores = llm.score_text_items([item], [item.spoken_text], shots="")[0]
        inputs = dict(documented_inputs(family, llm.processor, item.spoken_text, None))
    cue = llm.tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
    for k, option in enumerate(option_token_ids(llm.tokenizer, item.options)):
        ids = torch.tensor([list(inputs["input_ids"][0]) + cue + option])
        audio = {
            key: value
            for key, value in inputs.items()
            if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor)
        }
        with torch.no_grad():
            logits = llm.model(input_ids=ids, attention_mask=torch.ones_like(ids), **audio).logits[0]
        predicting = logits[ids.shape[1] - len(option) - 1 : -1].log_softmax(-1)
        by_hand = predicting[torch.arange(len(option)), torch.tensor(option)]
        assert_close_in_dtype(scores.logprob[k], by_hand.sum(), ulps=OTHER_PATH_ULPS)
        assert_close_in_dtype(scores.logprob_norm[k], by_hand.mean(), ulps=OTHER_PATH_ULPS)


def test_a_turn_whose_clip_did_not_come_through_or_with_per_token_inputs_is_refused(tiny_speech_llms):
    llm = SpeechLLM.from_pretrained(str(tiny_speech_llms["qwen2_audio"][0]))
    ids = {
        "input_ids": torch.ones(1, 5, dtype=torch.long),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="returned no audio tensors for a turn holding a clip"):
        llm.check_inputs(ids, heard=True)
    llm.check_inputs(ids, heard=False)
    with pytest.raises(ValueError, match=r"returns \['token_type_ids'\], with an entry per token"):
        llm.check_inputs({**ids, "token_type_ids": torch.zeros(1, 5)}, heard=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_salad_eval_measures_the_gap_of_another_speech_llm(
    family, tiny_speech_llms, recorded_tasks, tmp_path, monkeypatch
):
    """`salad-eval --model <tiny checkpoint> --base_model <its text LLM> --tasks FILE` end to end, offline: every
    system present, the speech LLM's choices those of its own log-probabilities on the recordings, the cascade read by
    the base LLM, and F and M (the two tokenizers write the same ids)."""
    speech_llm, base_llm = tiny_speech_llms[family]
    items = harness.load_task(str(recorded_tasks))
    monkeypatch.setattr(harness, "transcribe", lambda asr, clips, rate: [item.spoken_text for item in items])
    main([
        "--model", str(speech_llm), "--base_model", str(base_llm), "--tasks", str(recorded_tasks),
        "--output_dir", str(tmp_path), "--bootstrap_samples", "50",
    ])  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    report = results["tasks"]["recorded"]
    assert set(report["systems"]) == {"base_text", "salad_text", "salad_speech", "cascade", "prior"}
    llm = SpeechLLM.from_pretrained(str(speech_llm))
    clips = harness.synthesize_items(items, llm.sampling_rate)
    heard = [scores.choice() for scores in llm.score_speech_items(items, clips, shots="")]
    read = [
        scores.choice() for scores in llm.score_text_items(items, [i.spoken_text for i in items], shots="")
    ]
    assert [row["salad_speech"] for row in report["items"]] == heard
    assert [row["salad_text"] for row in report["items"]] == read
    assert report["systems"]["salad_speech"]["accuracy"] == np.mean(
        [c == i.answer for c, i in zip(heard, items)]
    )
    # a perfect transcript read by the base LLM is the base LLM reading the text
    assert [row["cascade"] for row in report["items"]] == [row["base_text"] for row in report["items"]]
    distribution = report["distribution"]
    assert distribution["misalignment"] > 0 and distribution["forgetting"] > 0  # two different random LLMs
    assert set(distribution["domains"]) == {item.domain for item in items}
    assert (tmp_path / "results.md").exists() and (tmp_path / "accuracy_per_task.png").exists()
    metrics = {m.metric_name for m in eval_results_from_gap_report(results)}  # what the model card reads
    assert {"Accuracy (SALAD, spoken question)", "Accuracy (ASR + base LLM, spoken question)"} <= metrics
    assert any("misalignment" in name.lower() for name in metrics)


def test_without_a_base_llm_the_speech_llm_answers_alone_and_f_says_why_it_is_absent(
    tiny_speech_llms, recorded_tasks, tmp_path
):
    speech_llm, _ = tiny_speech_llms["qwen2_audio"]
    args = ["--model", str(speech_llm), "--tasks", str(recorded_tasks), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="need the text LLM it was built from: pass --base_model"):
        main(args)
    main([*args, "--systems", "salad_text", "salad_speech", "prior", "--bootstrap_samples", "20"])
    report = json.loads((tmp_path / "results.json").read_text())["tasks"]["recorded"]
    assert set(report["systems"]) == {"salad_text", "salad_speech", "prior"} and "gap" not in report
    assert "speech_over_prior" in report
    assert report["distribution"]["forgetting_absent"] == "no --base_model"
    assert "forgetting" not in report["distribution"] and report["distribution"]["misalignment"] > 0


def test_f_is_left_out_where_the_base_llm_writes_other_ids(
    tiny_speech_llms, recorded_tasks, tmp_path, monkeypatch
):
    """Qwen2-Audio's tiny checkpoint against Voxtral's text LLM: a byte-level tekken vocabulary, not its BPE."""
    items = harness.load_task(str(recorded_tasks))
    monkeypatch.setattr(harness, "transcribe", lambda asr, clips, rate: [item.spoken_text for item in items])
    main([
        "--model", str(tiny_speech_llms["qwen2_audio"][0]), "--base_model", str(tiny_speech_llms["voxtral"][1]),
        "--tasks", str(recorded_tasks), "--output_dir", str(tmp_path), "--bootstrap_samples", "20",
    ])  # fmt: skip
    distribution = json.loads((tmp_path / "results.json").read_text())["tasks"]["recorded"]["distribution"]
    assert "writes other ids" in distribution["forgetting_absent"] and "forgetting" not in distribution


def test_models_that_cannot_hear_are_refused_with_the_families_and_the_interface(
    component_checkpoints, recorded_tasks, tmp_path
):
    with pytest.raises(
        ValueError,
        match="cannot measure a 'llama' model: its processor takes no audio.*granite_speech.*qwen2_audio.*voxtral.*returns next-token logits",
    ):
        main([
            "--model", str(component_checkpoints / "llm"), "--systems", "salad_speech", "--tasks",
            str(recorded_tasks), "--output_dir", str(tmp_path),
        ])  # fmt: skip


def test_qwen2_5_omni_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="cannot measure a 'qwen2_5_omni' model: .*thinker"):
        audio_turn_of(SimpleNamespace(model_type="qwen2_5_omni"), processor=None)


def test_salad_checkpoints_are_told_apart_from_other_speech_llms(
    tiny_speech_llms, component_checkpoints, tmp_path
):
    assert is_salad_checkpoint("embedded:untrained") and is_salad_checkpoint("embedded:salad")
    assert not is_salad_checkpoint(str(tiny_speech_llms["voxtral"][0]))
    assert not is_salad_checkpoint(str(component_checkpoints / "llm"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "salad"}))
    assert is_salad_checkpoint(str(tmp_path))


def test_the_self_cascade_is_refused_for_another_speech_llm(tiny_speech_llms, recorded_tasks, tmp_path):
    with pytest.raises(ValueError, match="`self_cascade` asks a SALAD model"):
        main([
            "--model", str(tiny_speech_llms["granite_speech"][0]), "--systems", "self_cascade", "--tasks",
            str(recorded_tasks), "--output_dir", str(tmp_path),
        ])  # fmt: skip


def results_of(model: str, speech_correct: list[bool]) -> dict:
    correct = {
        "base_text": [True] * 6,
        "salad_speech": speech_correct,
        "cascade": [True, True, True, False, True, True],
    }
    choices = {system: [0 if right else 1 for right in values] for system, values in correct.items()}
    report = gap_report(correct, choices, ["a"] * 6, num_samples=50)
    return {"config": {"model": model}, "tasks": {"offline": report}}


def test_compare_writes_one_table_and_one_plot_across_models(tmp_path):
    paths = []
    for name, speech in (
        ("embedded:salad", [True] * 5 + [False]),
        ("Qwen/Qwen2-Audio-7B-Instruct", [False] * 6),
    ):
        (tmp_path / name.replace("/", "_")).mkdir()
        paths.append(tmp_path / name.replace("/", "_") / "results.json")
        paths[-1].write_text(json.dumps(results_of(name, speech)))
    out = tmp_path / "compare"
    main(["--compare", *map(str, paths), "--output_dir", str(out)])
    table = (out / "comparison.md").read_text()
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| embedded:salad") or line.startswith("| Qwen")
    ]
    assert len(rows) == 2
    assert "| embedded:salad | offline | 1.000 | - | 0.833 | 0.833 | - | +0.167 [" in rows[0]
    assert rows[1].startswith(
        "| Qwen/Qwen2-Audio-7B-Instruct | offline | 1.000 | - | 0.000 | 0.833 | - | +1.000 [+1.000, +1.000] | - |"
        " -0.833 ["
    )  # no prior in these runs; speech minus the cascade
    assert rows[1].endswith("| - | - |")  # no F or M measured
    assert (out / "comparison.png").stat().st_size > 0


def test_compare_keeps_every_run_of_one_model(tmp_path):
    """Two runs of one model in folders of one name are numbered, not merged."""
    paths = []
    for k in range(2):
        (tmp_path / f"run{k}" / "eval").mkdir(parents=True)
        paths.append(tmp_path / f"run{k}" / "eval" / "results.json")
        paths[-1].write_text(json.dumps(results_of("embedded:salad", [k == 0] * 6)))
    main(["--compare", *map(str, paths), "--output_dir", str(tmp_path / "out")])
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| embedded:salad (eval) #1 | offline | 1.000 | - | 1.000 |" in table
    assert "| embedded:salad (eval) #2 | offline | 1.000 | - | 0.000 |" in table


def test_compare_names_files_that_are_no_results(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(ValueError, match="other.json is not a salad-eval results.json"):
        main(["--compare", str(tmp_path / "other.json"), "--output_dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no results file at .*missing.json"):
        main(["--compare", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path)])
