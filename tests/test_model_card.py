"""The model card: metadata the Hub parses back, a model-index holding the gap harness's exact numbers, prose."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import build_tiny
from huggingface_hub import ModelCard

from eval.gap import gap_report
from hub_scripts.model_card import build_model_card, model_facts
from trainers.paper import CITATION

REPO = "someone/salad-tiny"
RECIPE = {
    "stages": [
        {"name": "Stage I: cross-modal distillation", "alpha": 1.0, "speech_hours": 1.7, "steps": 372},
        {"name": "Stage II: active selection", "budget_hours": 0.5, "gamma": 2},
    ],
    "llm": "frozen",
}


def fake_results() -> dict:
    """A results.json as `salad-eval` writes it, from the harness's own `gap_report` on random answers."""
    rng = np.random.default_rng(0)
    results = {"config": {"num_fewshot": 2, "tts_backend": "espeak-ng", "limit": None}, "tasks": {}}
    for task, n in (("offline", 40), ("arc_challenge", 30)):
        systems = ("base_text", "salad_text", "salad_speech", "cascade", "prior")
        correct = {system: rng.random(n) < 0.5 for system in systems}
        choices = {system: rng.integers(0, 4, n).tolist() for system in systems}
        report = gap_report(correct, choices, ["a", "b"] * (n // 2), num_samples=50)
        report["chance"] = 0.25
        report["cascade_wer"] = 0.087
        report["distribution"] = {"forgetting": 0.0, "misalignment": 1.0234567891234567}
        results["tasks"][task] = report
    return results


@pytest.fixture(scope="module")
def config():
    model, _ = build_tiny("whisper", "transformer")
    return model.config


def expected_metrics(report: dict) -> dict:
    expected = {("accuracy", system): s["accuracy"] for system, s in report["systems"].items()}
    expected[("text-speech-gap", None)] = report["gap"]["value"]
    expected[("retention-gap", None)] = report["retention_gap"]["value"]
    expected[("speech-over-prior", None)] = report["speech_over_prior"]["value"]
    expected[("speech-minus-cascade", None)] = report["speech_minus_cascade"]["value"]
    expected[("wer", "cascade")] = report["cascade_wer"]
    expected[("forgetting", None)] = report["distribution"]["forgetting"]
    expected[("misalignment", None)] = report["distribution"]["misalignment"]
    return expected


def test_card_parses_back_and_model_index_holds_the_exact_numbers(config, tmp_path):
    results = fake_results()
    card = build_model_card(
        REPO,
        config,
        base_model=["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"],
        results=results,
        training_recipe=RECIPE,
        datasets=["someone/spoken-wiki"],
        tags=["my-tag"],
    )
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "audio-text-to-text"
    assert data.base_model == ["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert data.datasets == ["someone/spoken-wiki"] and data.license == "apache-2.0"
    assert {"salad", "speech-llm", "my-tag"} <= set(data.tags)
    assert data.model_name == "salad-tiny"

    found: dict[str, dict] = {}
    for result in data.eval_results:
        found.setdefault(result.dataset_name, {})[(result.metric_type, result.metric_config)] = (
            result.metric_value
        )
    assert set(found) == set(results["tasks"])
    for task, report in results["tasks"].items():
        assert found[task] == expected_metrics(report)  # exact: floats are copied, never rounded
    arc = next(r for r in data.eval_results if r.dataset_name == "arc_challenge")
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split) == (
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
    )
    assert arc.dataset_args == {"num_fewshot": 2, "tts_backend": "espeak-ng"}


def test_card_body_explains_usage_results_recipe_limits_and_citation(config):
    results = fake_results()
    text = build_model_card(REPO, config, results=results, training_recipe=RECIPE).text
    assert f'pipeline("salad-speech-to-text", model="{REPO}", trust_remote_code=True)' in text
    assert f'AutoModel.from_pretrained("{REPO}", trust_remote_code=True' in text
    gap = results["tasks"]["offline"]["gap"]["value"]
    assert f"| offline | {gap:+.3f}" in text
    assert "### Stage I: cross-modal distillation" in text and "**speech_hours**: 1.7" in text
    assert "**llm**: frozen" in text
    assert "## Limitations" in text and "2510.13632" in text and "ICLR" in CITATION and CITATION in text
    assert "`transformer`: 2 causal decoder layers" in text


def test_the_card_links_to_its_space_only_when_there_is_one(config):
    linked = build_model_card(REPO, config, space_id="someone/salad-demo").text
    assert "[someone/salad-demo](https://huggingface.co/spaces/someone/salad-demo)" in linked
    assert "huggingface.co/spaces" not in build_model_card(REPO, config).text


def test_card_without_results_or_recipe_says_so(config):
    card = build_model_card(REPO, config)
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "model_name" not in card.content
    assert "untrained" in card.text and "salad-eval" in card.text


def test_non_finite_numbers_stay_out_of_the_model_index(config):
    results = fake_results()
    results["tasks"]["offline"]["cascade_wer"] = math.nan
    card = build_model_card(REPO, config, results=results)
    metrics = {(r.dataset_name, r.metric_type) for r in card.data.eval_results}
    assert ("offline", "wer") not in metrics and ("arc_challenge", "wer") in metrics


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"results": {"systems": {}}}, "no 'tasks'"),
        ({"results": {"tasks": {"t": {"systems": {"s": {"n": 3}}}}}}, "no 'accuracy'"),
        ({"training_recipe": {"alpha": 1.0}}, "needs 'stages'"),
        ({"training_recipe": {"stages": [{"alpha": 1.0}]}}, "with a 'name'"),
    ],
)
def test_malformed_inputs_are_refused(config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model_card(REPO, config, **kwargs)


@pytest.mark.parametrize(
    "adapter_type, extra, words",
    [
        ("mlp", {}, "frame stacking"),
        ("transformer", {}, "causal decoder layers"),
        ("whisper_decoder", {"adapter_decoder_prompt_ids": [1]}, "Whisper's own frozen decoder transcribes"),
    ],
)
def test_the_card_describes_each_adapter_as_it_is(adapter_type, extra, words):
    model, _ = build_tiny("whisper", adapter_type, **extra)
    facts = model_facts(model.config)
    assert facts["adapter"].startswith(f"`{adapter_type}`") and words in facts["adapter"]
