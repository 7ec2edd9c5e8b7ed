"""The paper's claims at small scale, each next to its control, on the embedded default (run by hand).

    python benchmarks/reproduce_small.py --output_dir benchmarks/results/reproduce_small

Claims (of the paper, arXiv 2510.13632), each measured from the shipped embedded default on sentences it never saw, with accuracy
on the built-in spoken task set (held-out voice espeak-ng en-us) and M/F on rows spoken by held-out voices:

- `distillation_vs_nll`: cross-modal distillation (alpha 1) against plain next-token NLL (alpha 0), same
  steps, data and LoRA: the paper says distillation keeps the text LLM (F near 0) and aligns better (lower M).
- `active_vs_uniform`: Stage II with gamma 5 against gamma 0 (uniform over the pool's clusters) at the same
  synthesis budget, then the same continuation: the paper says targeted speech lowers M more.
- `gap_vs_minutes`: the text-speech gap of the shipped recipe's checkpoints against the minutes of speech they
  were trained on (needs `save_steps` checkpoints of `configs/embedded-default.yaml`).
- `latency`: time to first token and peak memory of the SALAD model against the Whisper tiny.en cascade on the
  same spoken questions (each system in its own process, so peak memory is its own).

Writes `results.json`, `results.md` and one plot per claim into `--output_dir`; claims run in separate calls
accumulate there (each keeps the arguments it was run with).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from latency import main as measure_latency  # noqa: E402  (a sibling script: benchmarks/ is on sys.path)
from transformers import HfArgumentParser

from hub_scripts.recipe import (
    RecipeArguments,
    continue_training,
    evaluate,
    fresh_data,
    load_rows_list,
    stage2_selection,
)

CLAIMS = ("distillation_vs_nll", "active_vs_uniform", "gap_vs_minutes", "latency")


@dataclass
class ReproduceArguments:
    output_dir: str = field(
        default="benchmarks/results/reproduce_small",
        metadata={"help": "Results folder: results.json, results.md and the plots."},
    )
    work_dir: str = field(
        default="runs/reproduce_small",
        metadata={"help": "Where the fresh data, selections, continued models and their evaluations go."},
    )
    claims: list[str] = field(default_factory=lambda: list(CLAIMS), metadata={"help": f"Subset of {CLAIMS}."})
    model: str = field(default="embedded:salad", metadata={"help": "The starting checkpoint."})
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Seeds of the continuations."})
    train_steps: int = field(default=60, metadata={"help": "Continuation steps per run (equal across arms)."})
    eval_items: int | None = field(
        default=None, metadata={"help": "Task items per evaluation (None: all 338)."}
    )
    pool_sentences: int = field(default=1500, metadata={"help": "Fresh text-pool sentences for Stage II."})
    checkpoints_dir: str = field(
        default="runs/embedded-default",
        metadata={"help": "Folder with the checkpoint-N folders of the main run."},
    )
    latency_questions: int = field(default=20, metadata={"help": "Spoken questions timed per system."})

    def __post_init__(self):
        unknown = set(self.claims) - set(CLAIMS)
        if unknown:
            raise ValueError(f"Unknown claims {sorted(unknown)}; choose from {CLAIMS}.")


def demo_arguments(args: ReproduceArguments, seed: int, alpha: float = 1.0) -> RecipeArguments:
    return RecipeArguments(
        output_dir=args.output_dir, model=args.model, eval_items=args.eval_items, pool_sentences=args.pool_sentences,
        train_steps=args.train_steps, seed=seed, alpha=alpha,
    )  # fmt: skip


def continuation_result(
    run_dir: Path, before: dict, after: dict, log: list[dict], demo: RecipeArguments
) -> dict:
    accuracy = evaluate(
        str(run_dir / "model"), ["salad_text", "salad_speech", "prior"], run_dir / "eval", demo
    )
    return {
        "before": before,
        "after": after,
        "accuracy": accuracy["systems"],
        "gap": accuracy.get("gap"),
        "final_train_divergence": [e["divergence"] for e in log if "divergence" in e][-1],
    }


def distillation_vs_nll(args: ReproduceArguments, data: dict, output: Path) -> dict:
    runs = {}
    for alpha in (1.0, 0.0):
        for seed in args.seeds:
            demo = demo_arguments(args, seed, alpha)
            run_dir = output / f"alpha{alpha:g}-seed{seed}"
            log, before, after = continue_training(
                data["shipped"], data["stage2_mix"], data["pool"], data["held_out"], run_dir, demo
            )
            runs[f"alpha={alpha:g}/seed={seed}"] = continuation_result(run_dir, before, after, log, demo)
    return runs


def active_vs_uniform(args: ReproduceArguments, data: dict, output: Path) -> dict:
    runs = {}
    for gamma in (5.0, 0.0):
        demo = demo_arguments(args, seed=0)
        selection = stage2_selection(
            data["shipped"], data["pool"], data["train"], output / f"stage2-gamma{gamma:g}", demo, gamma=gamma
        )
        for seed in args.seeds:
            demo = demo_arguments(args, seed)
            run_dir = output / f"gamma{gamma:g}-seed{seed}"
            log, before, after = continue_training(
                data["shipped"], output / f"stage2-gamma{gamma:g}" / "synthetic.jsonl", data["pool"],
                data["held_out"], run_dir, demo,
            )  # fmt: skip
            runs[f"gamma={gamma:g}/seed={seed}"] = {
                **continuation_result(run_dir, before, after, log, demo),
                "selected_seconds": selection["selected_seconds"],
            }
    return runs


def gap_vs_minutes(args: ReproduceArguments, work: Path) -> dict:
    """Speech and text accuracy of the main run's checkpoints, by minutes of speech seen."""
    checkpoints = sorted(
        Path(args.checkpoints_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    if not checkpoints:
        return {
            "skipped": f"no checkpoint-N folders in {args.checkpoints_dir}: train with save_steps to get them"
        }
    points = {}
    for checkpoint in checkpoints:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        logged = [
            entry["speech_minutes_seen"] for entry in state["log_history"] if "speech_minutes_seen" in entry
        ]
        minutes = logged[-1] if logged else None
        demo = demo_arguments(args, seed=0)
        result = evaluate(str(checkpoint), ["salad_speech", "prior"], work / f"curve-{checkpoint.name}", demo)
        points[checkpoint.name] = {"step": state["global_step"], "speech_minutes": minutes, **result}
    return points


def latency(args: ReproduceArguments) -> dict:
    """TTFT and peak RSS per system, each in a fresh process: `benchmarks/latency.py` on the same questions."""
    output = Path(args.output_dir) / "latency.json"
    measure_latency(
        ["--questions", str(args.latency_questions), "--model", args.model, "--output", str(output)]
    )
    measured = json.loads(output.read_text())["systems"]
    keys = ("ttft_median_seconds", "ttft_p90_seconds", "peak_rss_mb", "questions")
    return {system: {key: value[key] for key in keys} for system, value in measured.items()}


def percent(accuracy: dict, system: str) -> str:
    value = accuracy.get(system)
    if value is None:
        return "-"
    return f"{100 * value['accuracy']:.1f} [{100 * value['ci95'][0]:.1f}, {100 * value['ci95'][1]:.1f}]"


def continuation_table(runs: dict) -> list[str]:
    lines = [
        "| run | M before -> after | F before -> after | text acc | speech acc | prior |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        before, after, accuracy = run["before"], run["after"], run["accuracy"]
        lines.append(
            f"| {name} | {before['misalignment']:.3f} -> {after['misalignment']:.3f} | "
            f"{before['forgetting']:.3f} -> {after['forgetting']:.3f} | {percent(accuracy, 'salad_text')} | "
            f"{percent(accuracy, 'salad_speech')} | {percent(accuracy, 'prior')} |"
        )
    return lines


def markdown(results: dict) -> str:
    claims = results["claims"]
    lines = ["# The paper's claims at small scale (embedded default)", ""]
    for claim in ("distillation_vs_nll", "active_vs_uniform"):
        if claim in claims:
            lines += [f"## {claim}", "", *continuation_table(claims[claim]), ""]
    if "gap_vs_minutes" in claims:
        lines += ["## gap_vs_minutes", ""]
        curve = claims["gap_vs_minutes"]
        if "skipped" in curve:
            lines.append(curve["skipped"])
        else:
            lines += ["| checkpoint | minutes of speech | speech acc | prior |", "|---|---|---|---|"]
            for name, point in curve.items():
                lines.append(f"| {name} | {point['speech_minutes']} | {percent(point['systems'], 'salad_speech')} | "
                             f"{percent(point['systems'], 'prior')} |")  # fmt: skip
        lines.append("")
    if "latency" in claims:
        lines += [
            "## latency",
            "",
            "| system | TTFT median (s) | TTFT p90 (s) | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        for system, value in claims["latency"].items():
            lines.append(f"| {system} | {value['ttft_median_seconds']:.3f} | {value['ttft_p90_seconds']:.3f} | "
                         f"{value['peak_rss_mb']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(results: dict, output: Path) -> list[str]:
    """One bar plot of M after the continuation per arm (both comparisons), and the gap curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for claim in ("distillation_vs_nll", "active_vs_uniform"):
        runs = results["claims"].get(claim)
        if not runs:
            continue
        figure, axes = plt.subplots(1, 2, figsize=(8, 3))
        names = list(runs)
        axes[0].bar(names, [runs[n]["after"]["misalignment"] for n in names])
        axes[0].set_ylabel("M after (nats/token)")
        axes[1].bar(names, [runs[n]["after"]["forgetting"] for n in names])
        axes[1].set_ylabel("F after (nats/token)")
        for axis in axes:
            axis.tick_params(axis="x", rotation=30, labelsize=7)
        figure.suptitle(claim)
        figure.tight_layout()
        figure.savefig(output / f"{claim}.png", dpi=120)
        plt.close(figure)
        written.append(f"{claim}.png")
    curve = results["claims"].get("gap_vs_minutes", {})
    if curve and "skipped" not in curve:
        points = sorted(curve.values(), key=lambda p: p["step"])
        minutes = [p["speech_minutes"] for p in points]
        figure, axis = plt.subplots(figsize=(5, 3))
        axis.plot(
            minutes,
            [100 * p["systems"]["salad_speech"]["accuracy"] for p in points],
            marker="o",
            label="speech",
        )
        axis.plot(
            minutes,
            [100 * p["systems"]["prior"]["accuracy"] for p in points],
            linestyle="--",
            label="option prior",
        )
        axis.set_xlabel("minutes of speech seen in training")
        axis.set_ylabel("accuracy (%)")
        axis.legend()
        figure.tight_layout()
        figure.savefig(output / "gap_vs_minutes.png", dpi=120)
        plt.close(figure)
        written.append("gap_vs_minutes.png")
    return written


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ReproduceArguments).parse_args_into_dataclasses(args=argv)
    output, work = Path(args.output_dir), Path(args.work_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = {"arguments": {}, "claims": {}, "timings_seconds": {}}
    previous = output / "results.json"
    if previous.exists():  # claims run separately accumulate in one results file
        results.update(json.loads(previous.read_text()))
    for claim in args.claims:
        results["arguments"][claim] = asdict(args)
    data = {}
    if {"distillation_vs_nll", "active_vs_uniform"} & set(args.claims):
        from trainers.assets import resolve_checkpoint

        demo = demo_arguments(args, seed=0)
        data["shipped"] = Path(resolve_checkpoint(args.model))
        data["train"], held_out_file, data["pool"] = fresh_data(work, demo)
        data["held_out"] = load_rows_list(held_out_file)
        stage2_selection(data["shipped"], data["pool"], data["train"], work / "stage2-gamma5", demo)
        data["stage2_mix"] = work / "stage2-gamma5" / "train_mix.jsonl"
    for claim in args.claims:
        start = time.perf_counter()
        if claim == "distillation_vs_nll":
            results["claims"].setdefault(claim, {}).update(
                distillation_vs_nll(args, data, work)
            )  # seeds add up
        elif claim == "active_vs_uniform":
            results["claims"].setdefault(claim, {}).update(active_vs_uniform(args, data, work))
        elif claim == "gap_vs_minutes":
            results["claims"][claim] = gap_vs_minutes(args, work)
        else:
            results["claims"][claim] = latency(args)
        results["timings_seconds"][claim] = round(time.perf_counter() - start, 1)
        (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["plots"] = plot(results, output)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (output / "results.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
