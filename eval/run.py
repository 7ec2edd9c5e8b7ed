"""`salad-eval`: the text-speech gap of a SALAD model on spoken multiple-choice tasks.

    salad-eval --config configs/paper-cpu/eval.yaml
    salad-eval --model runs/my-salad --tasks offline arc_challenge --num_fewshot 5 --output_dir runs/eval

Five systems answer the same items by default: `base_text` (the original LLM on text: the reference),
`salad_text` (retention), `salad_speech` (question spoken, options read), `cascade` (ASR transcript -> base LLM)
and `prior` (options with the question left out: the option-prior control). A sixth, `self_cascade`, is a
diagnostic to ask for: the SALAD model writes down each clip itself, and the base LLM answers that transcript.
Writes `results.json` (what the model card reads), `results.md` and PNG plots to `output_dir`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, pipeline
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, load_audio, resample
from trainers.assets import UNTRAINED, load_salad, resolve_checkpoint
from trainers.assets.models import cache_dir
from trainers.distillation.misalignment import forgetting_and_misalignment
from trainers.distillation.probes import ProbeRow, RepeatPrompt, greedy_repeats, word_error_rate
from trainers.tts import get_backend, synthesize_many

from .gap import gap_report
from .scoring import (
    chat_prompt,
    few_shot_block,
    prior_prompt,
    score_speech_items,
    score_text_items,
    text_prompt,
)
from .tasks import MultipleChoiceItem, load_offline_tasks, load_task, parse_task_spec, safe_name

SYSTEMS = ("base_text", "salad_text", "salad_speech", "cascade", "prior", "self_cascade")
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "self_cascade")  # it generates per item: asked for by name


@dataclass
class EvalArguments:
    model: str = field(
        default=UNTRAINED,
        metadata={
            "help": "SALAD checkpoint (path or Hub id). `embedded:untrained` assembles Whisper tiny.en + a fresh "
            "adapter + SmolLM2-135M-Instruct from the offline packages (the untrained baseline)."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The original text LLM (reference and F). Default: the SALAD model's own LLM with LoRA off, "
            "exact when the LLM was frozen or LoRA-tuned; give it for fully fine-tuned LLMs."
        },
    )
    asr_model: str = field(
        default="embedded:whisper-tiny.en", metadata={"help": "Whisper checkpoint of the cascade's ASR."}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["offline"],
        metadata={
            "help": "'offline', paper tasks (arc_challenge, openbookqa, hellaswag, piqa, storycloze, mmsu) or JSONL "
            "files: a path (named by its stem) or name=path. Items with an `audio_path` are heard from that recording."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Items per task (None: all)."})
    num_fewshot: int = field(default=0, metadata={"help": "Text few-shot examples before each item."})
    systems: list[str] = field(
        default_factory=lambda: list(DEFAULT_SYSTEMS), metadata={"help": f"Subset of {SYSTEMS}."}
    )
    tts_backend: str = field(default="espeak-ng", metadata={"help": "TTS engine for the spoken items."})
    tts_voice: str | None = field(
        default=None, metadata={"help": "TTS voice (e.g. one held out from training)."}
    )
    tts_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Synthesis cache (default: `tts/` under `$SALAD_CACHE` or ~/.cache/salad)."},
    )
    distribution_metrics: bool = field(
        default=True, metadata={"help": "Also measure forgetting F and misalignment M."}
    )
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples of the intervals."})
    batch_size: int = field(default=16, metadata={"help": "Prompt + option sequences per forward pass."})
    normalized: bool = field(
        default=True, metadata={"help": "Pick options by length-normalized log-probability."}
    )
    chat: bool = field(
        default=False,
        metadata={
            "help": "Ask every system in the LLM's chat template (question in the user turn, `Answer:` opening "
            "the assistant's), as a model trained with `chat_format` was; default: the raw prompt."
        },
    )
    output_dir: str = field(
        default="runs/eval", metadata={"help": "Where results.json, results.md and plots go."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of the TTS voice choice."})

    def __post_init__(self):
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"Unknown systems {sorted(unknown)}; choose from {SYSTEMS}.")
        if not self.systems or not self.tasks:
            raise ValueError("Give at least one --systems entry and one --tasks entry.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(
                f"--limit must be a positive number of items per task (or unset for all), got {self.limit}."
            )


def synthesize_items(
    items: list[MultipleChoiceItem], args: EvalArguments, sampling_rate: int
) -> list[np.ndarray]:
    """Spoken versions of the items at the model's sampling rate: an item's own recording (`audio_path`) when
    it has one, else the TTS engine's speech (cached on disk)."""
    clips: list[np.ndarray | None] = [None] * len(items)
    for index, item in enumerate(items):
        if item.audio_path is not None:
            if not Path(item.audio_path).is_file():
                raise FileNotFoundError(f"Item {item.id!r}: its recording {item.audio_path} does not exist.")
            clips[index] = load_audio(item.audio_path, sampling_rate)
    to_speak = [index for index, clip in enumerate(clips) if clip is None]
    if to_speak:
        backend = get_backend(args.tts_backend)
        voices = [args.tts_voice] if args.tts_voice else None
        results = synthesize_many(
            [items[index].spoken_text for index in to_speak], backend, voices=voices, num_workers=0,
            cache_dir=tts_cache_dir(args), seed=args.seed,
        )  # fmt: skip
        for index, result in zip(to_speak, results):
            clips[index] = resample(result.audio, result.sampling_rate, sampling_rate)
    return clips


def tts_cache_dir(args: EvalArguments) -> Path:
    if args.tts_cache_dir is not None:
        return Path(args.tts_cache_dir).expanduser()
    return cache_dir() / "tts"


def transcribe(asr_model: str, clips: list[np.ndarray], sampling_rate: int) -> list[str]:
    """The cascade's first half: Whisper transcripts of the clips, one clip at a time (batched Whisper
    generation pads every clip to 30 s and was over ten times slower on a 2-core CPU)."""
    asr = pipeline("automatic-speech-recognition", model=resolve_checkpoint(asr_model))
    generate_kwargs = english_generate_kwargs(asr.model.generation_config)
    return [
        asr({"raw": clip, "sampling_rate": sampling_rate}, generate_kwargs=generate_kwargs)["text"].strip()
        for clip in tqdm(clips, desc="cascade ASR", leave=False)
    ]


def english_generate_kwargs(generation_config) -> dict:
    """Generation settings that make a Whisper transcribe English: the task set is spoken in English, and a
    multilingual Whisper left to detect each clip's language hears some robotic TTS voices as another language
    (Whisper base wrote one held-out clip in Turkish) and then transcribes or translates into it. English-only
    checkpoints (tiny.en) have no language token to set."""
    if getattr(generation_config, "is_multilingual", False):
        return {"language": "en", "task": "transcribe"}
    return {}


def self_transcribe(model, processor, items, clips, chat: bool) -> list[str]:
    """The self-cascade's first half: the SALAD model asked to repeat each clip (the alignment probes' repeat
    prompt, greedy; in the chat template with `chat`). Read by the base LLM as text, these transcripts separate
    the two failures that a spoken accuracy at the prior mixes: the adapter losing the words, or the LLM not
    using words it was given as audio. An item's text only bounds the length of its transcript."""
    rows = [ProbeRow(item.spoken_text, clip) for item, clip in zip(items, clips)]
    return greedy_repeats(model, processor, rows, prompt=RepeatPrompt(chat=chat))


def evaluate_task(name, items, model, processor, base_lm, args: EvalArguments) -> dict:
    """Every requested system on the items of one task; returns choices, correctness and the report."""
    tokenizer = processor.tokenizer
    fewshot = load_offline_tasks("fewshot")[: args.num_fewshot] if args.num_fewshot else []
    shots = few_shot_block(fewshot)
    needs_audio = {"salad_speech", "cascade", "self_cascade"} & set(args.systems)
    clips = synthesize_items(items, args, processor.sampling_rate) if needs_audio else []
    transcripts = {}  # per transcript-reading system
    if "cascade" in args.systems:
        transcripts["cascade"] = transcribe(args.asr_model, clips, processor.sampling_rate)
    if "self_cascade" in args.systems:
        transcripts["self_cascade"] = self_transcribe(model, processor, items, clips, args.chat)

    def framed(prompt: str) -> str:
        return chat_prompt(prompt, tokenizer) if args.chat else prompt

    def read_transcripts(system: str) -> list:
        prompts = [framed(text_prompt(transcript, shots)) for transcript in transcripts[system]]
        return score_text_items(base_lm, tokenizer, items, prompts, args.batch_size)

    texts = [framed(text_prompt(item.spoken_text, shots)) for item in items]
    speech_prompt = framed(text_prompt(processor.audio_token, shots))
    scorers = {
        "base_text": lambda: score_text_items(base_lm, tokenizer, items, texts, args.batch_size),
        "salad_text": lambda: score_text_items(model, tokenizer, items, texts, args.batch_size),
        "salad_speech": lambda: score_speech_items(
            model, processor, items, clips, speech_prompt, args.batch_size
        ),
        "cascade": lambda: read_transcripts("cascade"),
        "self_cascade": lambda: read_transcripts("self_cascade"),
        "prior": lambda: score_text_items(
            model, tokenizer, items, [framed(prior_prompt(shots))] * len(items), args.batch_size
        ),
    }
    choices, correct = {}, {}
    for system in tqdm(args.systems, desc=f"{name}: systems"):
        scores = scorers[system]()
        choices[system] = [s.choice(args.normalized) for s in scores]
        correct[system] = [c == item.answer for c, item in zip(choices[system], items)]
    report = gap_report(
        correct, choices, [item.domain for item in items], num_samples=args.bootstrap_samples, seed=args.seed
    )
    report["chance"] = float(np.mean([1 / len(item.options) for item in items]))
    for system, written in transcripts.items():
        report[f"{system}_wer"] = word_error_rate([item.spoken_text for item in items], written)
    if args.distribution_metrics and clips:
        rows = [
            {
                "text": item.spoken_text,
                "audio": {"array": clip, "sampling_rate": processor.sampling_rate},
                "domain": item.domain,
            }
            for item, clip in zip(items, clips)
        ]
        report["distribution"] = forgetting_and_misalignment(model, processor, rows)
    report["items"] = [
        {"id": item.id, "domain": item.domain, "answer": item.answer, **{s: choices[s][k] for s in choices}}
        for k, item in enumerate(items)
    ]
    return report


def _interval(difference: dict | None) -> str:
    if difference is None:
        return "-"
    low, high = difference["ci95"]
    return f"{difference['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown_table(results: dict) -> str:
    lines = ["| task | system | accuracy | 95% CI | n |", "|---|---|---|---|---|"]
    for task, report in results["tasks"].items():
        for system, summary in report["systems"].items():
            low, high = summary["ci95"]
            lines.append(
                f"| {task} | {system} | {summary['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | {summary['n']} |"
            )
    lines += [
        "",
        "| task | gap (base text - SALAD speech) | retention gap | speech - prior (paired) | speech/prior agreement "
        "| chance |",
        "|---|---|---|---|---|---|",
    ]
    for task, report in results["tasks"].items():
        agreement = report.get("speech_prior_agreement")
        agreement = "-" if agreement is None else f"{agreement:.2f}"
        gap, retention = _interval(report.get("gap")), _interval(report.get("retention_gap"))
        over_prior = _interval(report.get("speech_over_prior"))
        lines.append(
            f"| {task} | {gap} | {retention} | {over_prior} | {agreement} | {report['chance']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def save_plots(results: dict, output_dir: Path) -> list[str]:
    """Accuracy per task and system (with intervals); gap per domain for each task."""
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), which must come first

    paths = []
    tasks = list(results["tasks"])
    systems = list(next(iter(results["tasks"].values()))["systems"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(tasks) * len(systems) / 3, 4))
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
        acc = [results["tasks"][t]["systems"][system]["accuracy"] for t in tasks]
        err = np.array(
            [
                [
                    a - results["tasks"][t]["systems"][system]["ci95"][0],
                    results["tasks"][t]["systems"][system]["ci95"][1] - a,
                ]
                for t, a in zip(tasks, acc)
            ]
        ).T
        ax.bar(np.arange(len(tasks)) + k * width, acc, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(systems) - 1) / 2, tasks)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per task (95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(output_dir / "accuracy_per_task.png", dpi=120)
    plt.close(fig)
    paths.append("accuracy_per_task.png")
    for task, report in results["tasks"].items():
        domains = [d for d in report["domains"] if "gap" in report["domains"][d]]
        if not domains:
            continue
        gaps = [report["domains"][d]["gap"]["value"] for d in domains]
        err = np.array(
            [
                [g - report["domains"][d]["gap"]["ci95"][0], report["domains"][d]["gap"]["ci95"][1] - g]
                for d, g in zip(domains, gaps)
            ]
        ).T
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(domains)), 4))
        ax.bar(domains, gaps, yerr=err, capsize=3, color="tab:red")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("text - speech accuracy")
        ax.set_title(f"{task}: text-speech gap per domain")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        path = f"gap_per_domain_{safe_name(task)}.png"
        fig.savefig(output_dir / path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def task_sources(specs: list[str]) -> dict[str, str]:
    """Short, unique task names (what results, plots and the card show) -> where each task comes from."""
    sources: dict[str, str] = {}
    for spec in specs:
        name, source = parse_task_spec(spec)
        if name in sources:
            raise ValueError(
                f"Two tasks are named {name!r} ({sources[name]} and {source}); name them with `name=path`."
            )
        sources[name] = source
    return sources


def run(args: EvalArguments) -> dict:
    sources = task_sources(args.tasks)
    items_per_task = {
        name: load_task(source, args.limit) for name, source in sources.items()
    }  # before the model
    dtype = getattr(torch, args.dtype)
    model, processor = load_salad(args.model, dtype)
    base_lm = None
    if args.base_model is not None:
        base_lm = AutoModelForCausalLM.from_pretrained(
            resolve_checkpoint(args.base_model), dtype=dtype
        ).eval()
    reference = base_lm if base_lm is not None else _LoraOffLM(model)
    results = {"config": asdict(args), "task_sources": sources, "tasks": {}}
    for name, items in items_per_task.items():
        results["tasks"][name] = evaluate_task(name, items, model, processor, reference, args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown_table(results))
    results["plots"] = save_plots(results, output_dir)
    return results


class _LoraOffLM(torch.nn.Module):
    """The SALAD model's own LLM with LoRA switched off: the original text LLM when it was frozen or LoRA-tuned."""

    def __init__(self, model: SaladForConditionalGeneration):
        super().__init__()
        self.model = model

    def hidden_states_and_head(self, **inputs) -> tuple[torch.Tensor, torch.nn.Module]:
        with self.model.lora_disabled():
            hidden = self.model.language_model.get_decoder()(**inputs).last_hidden_state
        return hidden, self.model.get_output_embeddings()


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((EvalArguments,)).parse_args_and_config(args=argv)
    results = run(args)
    print(markdown_table(results))
    print(f"Results, table and plots in {args.output_dir}")


if __name__ == "__main__":
    main()
