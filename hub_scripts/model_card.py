"""The model card of a published SALAD checkpoint, built with `huggingface_hub.ModelCard`/`ModelCardData`.

    card = build_model_card("me/salad-smollm2", model.config, base_model=[...], results=json.load(...))
    card.save("README.md")

The metadata holds what the Hub indexes: `library_name`, `pipeline_tag`, `base_model`, `datasets`, `license`,
tags and a `model-index` whose values are the gap harness's numbers (`salad-eval`'s `results.json`) copied
unrounded, so the card and the JSON never disagree. The body (`model_card_template.md`, rendered by
`ModelCard.from_template`) explains the model, how to load it, the gap, the training recipe, its limitations and
the paper to cite.

`pipeline_tag` is `audio-text-to-text`: the model takes speech (plus an optional text prompt) and answers in
text, the Hub task of speech LLMs such as Qwen2-Audio or Ultravox, so that is where users look for it. In
transformers it is served by the checkpoint's own `salad-speech-to-text` and `any-to-any` pipelines (remote code);
neither name is a Hub task tag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from eval.tasks import PAPER_TASKS
from modeling_salad import adapter_class
from trainers.paper import CITATION, PAPER_ARXIV_ID

PIPELINE_TAG = "audio-text-to-text"
SPEECH_PIPELINE_TASK = "salad-speech-to-text"
DEFAULT_TAGS = ("salad", "speech-llm", "speech", "cross-modal-distillation", "custom_code")
# The card body: a Jinja template that `ModelCard.from_template` renders (package data).
CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
EVAL_TASK_NAME = "Spoken multiple-choice QA (text-speech understanding gap)"

# What each system of the gap harness is, in the words a reader of the card needs.
SYSTEM_LABELS = {
    "base_text": "base LLM, text question",
    "salad_text": "SALAD, text question",
    "salad_speech": "SALAD, spoken question",
    "cascade": "ASR + base LLM, spoken question",
    "prior": "SALAD, options only, no question",
}
# Differences between systems (accuracy points), as `gap_report` names them.
GAP_METRICS = {
    "gap": ("text-speech-gap", "Text-speech gap (base LLM text - SALAD speech)"),
    "retention_gap": ("retention-gap", "Retention gap (base LLM text - SALAD text)"),
    "speech_over_prior": ("speech-over-prior", "SALAD speech over the option prior (paired)"),
    "speech_minus_cascade": ("speech-minus-cascade", "SALAD speech minus the ASR + LLM cascade (paired)"),
}
DISTRIBUTION_METRICS = {
    "forgetting": ("forgetting", "Forgetting F (KL base LLM || SALAD, text, per token)"),
    "misalignment": ("misalignment", "Misalignment M (KL SALAD text || SALAD speech, per token)"),
}


# ---------------------------------------------------------------------------------------------- metadata
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dataset_fields(task: str, run_config: Mapping) -> dict:
    """Dataset identity of a task in the model-index: the Hub dataset for the paper's tasks, else the name."""
    args = {
        key: run_config[key]
        for key in ("num_fewshot", "limit", "tts_backend", "tts_voice")
        if key in run_config
    }
    args = {key: value for key, value in args.items() if value is not None}
    if task in PAPER_TASKS:
        dataset_id, config, split, _ = PAPER_TASKS[task]
        return {
            "dataset_type": dataset_id,
            "dataset_name": task,
            "dataset_config": config,
            "dataset_split": split,
            "dataset_args": args or None,
        }
    return {"dataset_type": task, "dataset_name": task, "dataset_args": args or None}


def validate_results(results: Mapping) -> None:
    """Refuse a results JSON that is not the gap harness's, before anything is uploaded."""
    tasks = results.get("tasks") if isinstance(results, Mapping) else None
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(
            "The results JSON has no 'tasks': give the results.json that `salad-eval` writes "
            "(results['tasks'][task]['systems'][system]['accuracy'])."
        )
    for task, report in tasks.items():
        systems = report.get("systems") if isinstance(report, Mapping) else None
        if not isinstance(systems, Mapping) or not systems:
            raise ValueError(f"Task {task!r} of the results JSON has no 'systems'.")
        for system, summary in systems.items():
            if not isinstance(summary, Mapping) or "accuracy" not in summary:
                raise ValueError(f"Task {task!r}, system {system!r}: no 'accuracy' in the results JSON.")


def task_metrics(report: Mapping) -> list[dict]:
    """The numbers of one task's report as model-index metrics: accuracy per system, gaps, WER, F and M.

    Values are copied as they are (no rounding). Non-finite values (an empty subset's NaN) are left out,
    since the Hub's metadata validation refuses them.
    """
    metrics = [
        {
            "metric_type": "accuracy",
            "metric_name": f"Accuracy ({SYSTEM_LABELS.get(system, system)})",
            "metric_config": system,
            "metric_value": summary["accuracy"],
        }
        for system, summary in report["systems"].items()
    ]
    for key, (metric_type, name) in GAP_METRICS.items():
        if isinstance(report.get(key), Mapping):
            metrics.append(
                {"metric_type": metric_type, "metric_name": name, "metric_value": report[key]["value"]}
            )
    if "cascade_wer" in report:
        metrics.append(
            {
                "metric_type": "wer",
                "metric_name": "WER of the cascade's ASR on the spoken questions",
                "metric_config": "cascade",
                "metric_value": report["cascade_wer"],
            }
        )
    distribution = report.get("distribution") or {}
    for key, (metric_type, name) in DISTRIBUTION_METRICS.items():
        if key in distribution:
            metrics.append(
                {"metric_type": metric_type, "metric_name": name, "metric_value": distribution[key]}
            )
    return [metric for metric in metrics if _is_number(metric["metric_value"])]


def eval_results_from_gap_report(results: Mapping) -> list[EvalResult]:
    """`EvalResult`s for the `model-index`: one result per task, one metric per system and gap."""
    validate_results(results)
    run_config = results.get("config") or {}
    eval_results = []
    for task, report in results["tasks"].items():
        dataset = _dataset_fields(task, run_config)
        for metric in task_metrics(report):
            eval_results.append(
                EvalResult(task_type=PIPELINE_TAG, task_name=EVAL_TASK_NAME, **dataset, **metric)
            )
    return eval_results


# -------------------------------------------------------------------------------------------------- body
def _number(value, spec: str) -> str:
    return format(value, spec) if _is_number(value) else "-"


def _format_interval(summary: Mapping | None, signed: bool = False) -> str:
    if not isinstance(summary, Mapping) or not _is_number(summary.get("value", summary.get("accuracy"))):
        return "-"
    value = summary.get("value", summary.get("accuracy"))
    low, high = summary["ci95"]
    number = "{:+.3f}" if signed else "{:.3f}"
    return f"{number.format(value)} [{number.format(low)}, {number.format(high)}]"


def accuracy_table(results: Mapping) -> list[str]:
    """Accuracy of every system per task, with intervals (3 decimals; the metadata holds the exact values)."""
    systems = list(dict.fromkeys(s for report in results["tasks"].values() for s in report["systems"]))
    header = "| task | " + " | ".join(SYSTEM_LABELS.get(s, s) for s in systems) + " | n | chance |"
    rows = [header, "|" + "---|" * (len(systems) + 3)]
    for task, report in results["tasks"].items():
        cells = [_format_interval(report["systems"].get(s)) for s in systems]
        n = max(summary.get("n", 0) for summary in report["systems"].values())
        rows.append(f"| {task} | {' | '.join(cells)} | {n} | {_number(report.get('chance'), '.2f')} |")
    return rows


def gap_table(results: Mapping) -> list[str]:
    """The gaps, speech over the prior and against the cascade, prior agreement, cascade WER and F / M per task."""
    rows = [
        "| task | text-speech gap | retention gap | speech - prior (paired) | speech - cascade (paired) "
        "| speech/prior agreement | cascade ASR WER | forgetting F | misalignment M |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, report in results["tasks"].items():
        distribution = report.get("distribution") or {}
        cells = [
            _format_interval(report.get("gap"), signed=True),
            _format_interval(report.get("retention_gap"), signed=True),
            _format_interval(report.get("speech_over_prior"), signed=True),
            _format_interval(report.get("speech_minus_cascade"), signed=True),
            _number(report.get("speech_prior_agreement"), ".2f"),
            _number(report.get("cascade_wer"), ".3f"),
            _number(distribution.get("forgetting"), ".4f"),
            _number(distribution.get("misalignment"), ".4f"),
        ]
        rows.append(f"| {task} | {' | '.join(cells)} |")
    return rows


def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{key}: {_format_value(item)}" for key, item in value.items())
    return str(value)


def validate_training_recipe(recipe: Mapping) -> None:
    stages = recipe.get("stages") if isinstance(recipe, Mapping) else None
    if not isinstance(stages, list) or not stages:
        raise ValueError(
            "A training recipe needs 'stages': a non-empty list of dicts, each with a 'name' (e.g. "
            "{'name': 'Stage I: cross-modal distillation', 'alpha': 1.0, 'speech_hours': 1.7, 'steps': 372})."
        )
    for index, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or "name" not in stage:
            raise ValueError(f"Training recipe stage {index} must be a dict with a 'name'.")


def recipe_stages(recipe: Mapping) -> tuple[list[dict], list[tuple[str, str]]]:
    """The recipe as given, for the card: each stage's name and details, then the recipe's other keys."""
    stages = [
        {"name": stage["name"], "details": [(k, _format_value(v)) for k, v in stage.items() if k != "name"]}
        for stage in recipe["stages"]
    ]
    across = [(key, _format_value(value)) for key, value in recipe.items() if key != "stages"]
    return stages, across


def model_facts(config) -> dict:
    """What the checkpoint is made of, read from its `SaladConfig`."""
    return {
        "encoder_type": config.audio_config.model_type,
        "sampling_rate": config.audio_sampling_rate,
        "adapter": adapter_class(config.adapter_type).describe(config),
        "stack_factor": config.adapter_stack_factor,
        "tokens_per_second": config.audio_length_spec.num_tokens(config.audio_sampling_rate),
        "llm_type": config.text_config.model_type,
        "llm_hidden_size": config.text_config.hidden_size,
    }


def build_model_card(
    repo_id: str,
    config,
    *,
    base_model: Sequence[str] = (),
    results: Mapping | None = None,
    training_recipe: Mapping | None = None,
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    language: Sequence[str] = ("en",),
    tags: Sequence[str] = (),
    lora_subfolder: str | None = None,
    space_id: str | None = None,
) -> ModelCard:
    """The model card of a SALAD checkpoint.

    Args:
        repo_id: the Hub repository the card describes (used in the usage snippets and as the model-index name).
        config: the checkpoint's `SaladConfig`.
        base_model: Hub ids of the speech encoder and the LLM the model was built from.
        results: `results.json` of `salad-eval` (the gap harness); its numbers fill the `model-index`.
        training_recipe: `{"stages": [{"name": ..., **details}, ...], **other}`; e.g. alpha, hours of speech
            and steps per stage. Rendered as given.
        datasets: Hub ids of the training data.
        license: license of the weights (mind the base models' licenses).
        language: languages of the speech and text the model was trained on.
        tags: extra Hub tags, added to salad's.
        lora_subfolder: where the LLM's LoRA adapter lives when it was not merged (`salad-push --no_merge_lora`).
        space_id: the Gradio Space that serves the model (`salad-push --space_id`), linked from the card.
    """
    if not repo_id:
        raise ValueError("repo_id is required: the card's usage snippets load the model from it.")
    if results is not None:
        validate_results(results)
    if training_recipe is not None:
        validate_training_recipe(training_recipe)
    card_data = ModelCardData(
        # the model-index's name; alone, `model_name` would be a stray metadata key
        model_name=repo_id.split("/")[-1] if results is not None else None,
        base_model=list(base_model) or None,
        datasets=list(datasets) or None,
        eval_results=eval_results_from_gap_report(results) if results is not None else None,
        language=list(language) or None,
        library_name="transformers",
        license=license,
        pipeline_tag=PIPELINE_TAG,
        tags=[*DEFAULT_TAGS, *tags],
    )
    stages, across = recipe_stages(training_recipe) if training_recipe is not None else (None, [])
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        arxiv_id=PAPER_ARXIV_ID,
        citation=CITATION,
        pipeline_task=SPEECH_PIPELINE_TASK,
        lora_subfolder=lora_subfolder,
        space_id=space_id,
        accuracy_table=accuracy_table(results) if results is not None else None,
        gap_table=gap_table(results) if results is not None else None,
        stages=stages,
        across_stages=across,
        **model_facts(config),
    )


__all__ = ["PIPELINE_TAG", "build_model_card", "eval_results_from_gap_report", "task_metrics"]
