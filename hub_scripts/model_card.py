"""The model card of a published SALAD checkpoint, built with `huggingface_hub.ModelCard`/`ModelCardData`.

    card = build_model_card("me/salad-smollm2", model.config, base_model=[...], results=json.load(...))
    card.save("README.md")

The metadata holds what the Hub indexes: `library_name`, `pipeline_tag`, `base_model`, `datasets`, `license`,
tags and a `model-index` whose values are the gap harness's numbers (`eval/run.py`'s `results.json`) copied
unrounded, so the card and the JSON never disagree. The body explains the model, how to load it, the gap, the
training recipe, its limitations and the paper to cite.

`pipeline_tag` is `audio-text-to-text`: the model takes speech (plus an optional text prompt) and answers in
text, the Hub task of speech LLMs such as Qwen2-Audio or Ultravox, so that is where users look for it. In
transformers it is served by the checkpoint's own `salad-speech-to-text` pipeline (remote code) and by the
built-in `any-to-any` pipeline; neither name is a Hub task tag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from eval.tasks import PAPER_TASKS
from trainers.paper import CITATION, PAPER_ARXIV_ID

PIPELINE_TAG = "audio-text-to-text"
SPEECH_PIPELINE_TASK = "salad-speech-to-text"
DEFAULT_TAGS = ("salad", "speech-llm", "speech", "cross-modal-distillation", "custom_code")
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


def results_section(results: Mapping | None) -> str:
    """The gap harness's numbers as tables (3 decimals; the metadata holds the exact values)."""
    if results is None:
        return (
            "## Evaluation\n\nNo evaluation results were given when this card was written. Measure the "
            "text-speech gap with `salad-eval --model <this repo>` and push again with `--results results.json`.\n"
        )
    systems = list(dict.fromkeys(s for report in results["tasks"].values() for s in report["systems"]))
    header = "| task | " + " | ".join(SYSTEM_LABELS.get(s, s) for s in systems) + " | n | chance |"
    lines = [header, "|" + "---|" * (len(systems) + 3)]
    for task, report in results["tasks"].items():
        cells = [_format_interval(report["systems"].get(s)) for s in systems]
        n = max(summary.get("n", 0) for summary in report["systems"].values())
        lines.append(f"| {task} | {' | '.join(cells)} | {n} | {_number(report.get('chance'), '.2f')} |")
    gap_lines = [
        "| task | text-speech gap | retention gap | speech/prior agreement | cascade ASR WER | forgetting F "
        "| misalignment M |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, report in results["tasks"].items():
        distribution = report.get("distribution") or {}
        cells = [
            _format_interval(report.get("gap"), signed=True),
            _format_interval(report.get("retention_gap"), signed=True),
            _number(report.get("speech_prior_agreement"), ".2f"),
            _number(report.get("cascade_wer"), ".3f"),
            _number(distribution.get("forgetting"), ".4f"),
            _number(distribution.get("misalignment"), ".4f"),
        ]
        gap_lines.append(f"| {task} | {' | '.join(cells)} |")
    return "\n".join(
        [
            "## Evaluation: the text-speech understanding gap",
            "",
            "The same multiple-choice items are answered by every system: the original text LLM reading the "
            "question (the reference), this model reading it, this model hearing it, a cascade that transcribes "
            "the speech with an ASR model and gives the transcript to the original LLM, and an option-prior "
            "control that scores the options with the question left out. Options are always scored as text, by "
            "their length-normalized log-probability. Accuracies carry 95% percentile-bootstrap intervals over "
            "items; the gaps are paired differences of accuracy over the same items (0.050 is 5 points).",
            "",
            *lines,
            "",
            *gap_lines,
            "",
            "A speech accuracy close to the option-prior control, or a high share of items where both pick the "
            "same option (agreement), means the model answers from the options, not from what it heard. F and M are per-token KL divergences (nats), the two causes of the gap the "
            "paper identifies: forgetting of text abilities, and misalignment between speech and text.",
            "",
        ]
    )


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


def training_section(recipe: Mapping | None) -> str:
    """The recipe as given: one subsection per stage, then the recipe's other keys."""
    if recipe is None:
        return (
            "## Training\n\nNo training recipe was given when this card was written. A checkpoint straight out "
            "of `hub_scripts.build` has a freshly initialized (untrained) adapter: its answers do not follow "
            "the audio.\n"
        )
    validate_training_recipe(recipe)
    lines = [
        "## Training",
        "",
        "Trained with the SALAD recipe: cross-modal distillation (the model hears a span that the original "
        "text LLM reads, and learns the LLM's next-token distribution there: "
        "`alpha * KL(teacher || student) + (1 - alpha) * NLL`), optionally followed by active selection of "
        "synthetic speech where the model is most misaligned.",
        "",
    ]
    for stage in recipe["stages"]:
        lines += [f"### {stage['name']}", ""]
        lines += [f"- **{key}**: {_format_value(value)}" for key, value in stage.items() if key != "name"]
        lines.append("")
    others = {key: value for key, value in recipe.items() if key != "stages"}
    if others:
        lines += ["### Across stages", ""]
        lines += [f"- **{key}**: {_format_value(value)}" for key, value in others.items()]
    return "\n".join(lines).rstrip() + "\n"


def model_section(config, base_model: Sequence[str]) -> str:
    """What the checkpoint is made of, read from its `SaladConfig`."""
    tokens_per_second = config.audio_length_spec.num_tokens(config.audio_sampling_rate)
    adapter = (
        f"`transformer`: {config.adapter_num_layers} causal decoder layers of width {config.adapter_hidden_size}"
        if config.adapter_type == "transformer"
        else f"`mlp`: frame stacking and a SwiGLU MLP of width {config.adapter_intermediate_size}"
    )
    lines = [
        "## Model",
        "",
        f"- **Speech encoder**: `{config.audio_config.model_type}` ({config.audio_sampling_rate} Hz mono input)",
        f"- **Adapter**: {adapter}, {config.adapter_stack_factor} encoder frame(s) per audio token "
        f"({tokens_per_second} audio tokens for one second of speech)",
        f"- **Language model**: `{config.text_config.model_type}`, hidden size {config.text_config.hidden_size}",
        "- **Audio in the prompt**: each clip becomes audio embeddings written at `<|audio|>` placeholder "
        "positions of the LLM input.",
    ]
    if base_model:
        lines.append(
            "- **Built from**: "
            + ", ".join(f"[{name}](https://huggingface.co/{name})" for name in base_model)
        )
    return "\n".join(lines) + "\n"


def usage_section(repo_id: str, lora_subfolder: str | None) -> str:
    lines = [
        "## Usage",
        "",
        "The repository carries its own code, so transformers loads it with `trust_remote_code=True` (read the "
        "code first: it runs on your machine). The pipeline takes file paths, raw file bytes or arrays with "
        "their sampling rate, at any rate and channel count (it resamples and down-mixes).",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'speech = pipeline("{SPEECH_PIPELINE_TASK}", model="{repo_id}", trust_remote_code=True)',
        'speech("question.wav", prompt="Answer briefly.", max_new_tokens=64)',
        "# {'generated_text': '...'}",
        "```",
        "",
        "With the model and processor directly (several clips per prompt, batches, chat messages):",
        "",
        "```python",
        "import soundfile as sf",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True, dtype="auto")',
        f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
        'audio, rate = sf.read("question.wav", dtype="float32")  # mono, at the encoder\'s rate',
        'inputs = processor(text="<|audio|> Answer briefly.", audio=audio, sampling_rate=rate)',
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        "```",
    ]
    if lora_subfolder:
        lines += [
            "",
            f"The LLM's LoRA weights are kept apart in `{lora_subfolder}/` (a PEFT adapter of the language "
            "model). The weights at the top level are the original LLM with the trained speech adapter; load "
            "the LoRA on top before use, since the speech adapter was trained with it:",
            "",
            "```python",
            f'model.language_model.load_adapter("{repo_id}", adapter_kwargs={{"subfolder": "{lora_subfolder}"}})',
            "```",
        ]
    return "\n".join(lines) + "\n"


LIMITATIONS = """\
## Limitations

- The model understands speech only as well as its training made it: an untrained or briefly trained adapter
  yields answers that ignore the audio. Check the speech accuracy against the option-prior control above.
- The gap above is measured on multiple-choice items, mostly read by a speech synthesizer. Human, accented,
  noisy or conversational speech, and speakers, languages or conditions absent from the training data (see
  the recipe), can do worse.
- It answers in text and does not transcribe faithfully: for transcripts use an ASR model.
- It inherits the knowledge, errors and biases of its base LLM and speech encoder, and their licenses.
- Long audio is cut into the encoder's windows (30 s for Whisper) and every window costs LLM context.
"""


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
    body = "\n".join(
        [
            f"# {repo_id.split('/')[-1]}",
            "",
            "A speech-understanding LLM: a speech encoder feeds an adapter whose outputs the LLM reads in place of "
            "`<|audio|>` tokens, so spoken questions and instructions get text answers. It was made with salad, "
            f"an implementation of the SALAD recipe ([Cuervo et al., ICLR 2026](https://arxiv.org/abs/{PAPER_ARXIV_ID}): "
            "cross-modal distillation plus active selection of synthetic speech), which also measures how much of "
            "the LLM's text understanding survives when the same content is spoken.",
            "",
            model_section(config, base_model),
            usage_section(repo_id, lora_subfolder),
            results_section(results),
            training_section(training_recipe),
            LIMITATIONS,
            "## Citation",
            "",
            "The SALAD method is by the paper's authors; this checkpoint and its code are an independent "
            "implementation.",
            "",
            "```bibtex",
            CITATION,
            "```",
            "",
        ]
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


__all__ = ["PIPELINE_TAG", "build_model_card", "eval_results_from_gap_report", "task_metrics"]
