"""The paper's claims at small scale, each next to its control, from the shipped embedded default (run by hand).

    python benchmarks/reproduce_small.py --claims distillation_vs_nll active_vs_uniform gap_vs_minutes
    python benchmarks/reproduce_small.py --claims latency        # alone on the machine

Claims (of the paper, arXiv 2510.13632), each measured from the shipped model on sentences it never saw:

- `distillation_vs_nll`: cross-modal distillation (alpha 1) against plain next-token NLL (alpha 0), the same steps,
  data and LoRA: the paper says distillation keeps the text LLM (F near 0, text accuracy kept).
- `active_vs_uniform`: Stage II with gamma 5 against gamma 0 (clusters drawn as the pool is) at the same synthesis
  budget, then the same continuation: the paper says targeted speech lowers M more and answers better where it was
  aimed. The report shows which clusters got the budget and why (M(c), example texts), which of the task set's
  domains that budget reached, and how near the pool's sentences come to each domain's questions at all.
- `gap_vs_minutes`: one continuation with a checkpoint every `curve_steps / curve_points` steps: spoken accuracy,
  the gap to the same checkpoint on text, and spoken minus the cascade, against the minutes of speech trained on.
- `latency`: time to first token and peak memory against the cascade (`benchmarks/latency.py`).

Accuracy is taken on the built-in set spoken by every held-out voice (`--voices`, espeak-ng `en-us` and flite `slt`,
which training never uses); M and F on held-out rows spoken by those voices. Each arm runs with every seed of
`--seeds`; two arms are compared on the same items by a paired bootstrap over the items, after each arm's answers
are averaged over its seeds item by item. The cascade (the shipped model's Whisper read over 30 s, then SmolLM2)
and SmolLM2 on text are measured once: they do not depend on the arm. Whisper's transcripts of the clips are kept
in `--transcript_cache_dir` and shared by every arm, whose Whisper is frozen.

Writes `results.json` (naming the model and the commit it was measured on), `results.md` and one plot per claim into
`--output_dir`; claims run in separate calls accumulate there, each with its arguments and its wall time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from latency import machine  # noqa: E402  (a sibling script: benchmarks/ is on sys.path)
from latency import main as measure_latency
from transformers import HfArgumentParser

from eval.gap import accuracy_summary, paired_difference
from eval.harness import EvalArguments, run
from eval.speech import HELD_OUT_VOICES
from eval.tasks import load_offline_tasks
from hub_scripts.recipe import (
    RecipeArguments,
    continue_training,
    fresh_data,
    load_rows_list,
    stage2_selection,
)
from trainers.assets import resolve_checkpoint
from trainers.selection.active_selection import sentence_encoder

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ("distillation_vs_nll", "active_vs_uniform", "gap_vs_minutes", "latency")
#: systems that hear the clip, measured once per voice; the others read text, measured once
SPEECH_SYSTEMS = ("salad_speech", "cascade")


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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds of every arm."})
    train_steps: int = field(default=40, metadata={"help": "Continuation steps per arm (equal across arms)."})
    curve_steps: int = field(default=200, metadata={"help": "gap_vs_minutes: steps of its one continuation."})
    curve_points: int = field(
        default=5, metadata={"help": "gap_vs_minutes: checkpoints along it (issue 35 asks at least 5)."}
    )
    voices: list[str] = field(
        default_factory=lambda: list(HELD_OUT_VOICES),
        metadata={"help": f"Held-out voices the built-in set is spoken in, from {list(HELD_OUT_VOICES)}."},
    )
    eval_items: int | None = field(
        default=None, metadata={"help": "Task items per evaluation (None: all 338)."}
    )
    pool_sentences: int = field(default=1500, metadata={"help": "Fresh text-pool sentences for Stage II."})
    transcript_cache_dir: str = field(
        default="runs/transcript-cache",
        metadata={"help": "Whisper transcripts of every clip, shared by the arms (their Whisper is frozen)."},
    )
    latency_questions: int = field(default=20, metadata={"help": "Spoken questions timed per system."})

    def __post_init__(self):
        unknown = set(self.claims) - set(CLAIMS)
        if unknown:
            raise ValueError(f"Unknown claims {sorted(unknown)}; choose from {CLAIMS}.")
        voices = set(self.voices) - set(HELD_OUT_VOICES)
        if voices:
            raise ValueError(f"Unknown voices {sorted(voices)}; choose from {list(HELD_OUT_VOICES)}.")
        if self.curve_points < 1 or self.curve_steps % self.curve_points:
            raise ValueError(
                f"--curve_steps ({self.curve_steps}) must be a multiple of --curve_points ({self.curve_points}), "
                "so that the checkpoints are evenly spaced."
            )


def recipe_arguments(args: ReproduceArguments, seed: int, alpha: float = 1.0, steps: int | None = None):
    """The recipe's settings for one arm: fp32 everywhere, so that arms measured on different CPUs compare."""
    return RecipeArguments(
        output_dir=args.work_dir, model=args.model, eval_items=args.eval_items, pool_sentences=args.pool_sentences,
        train_steps=steps or args.train_steps, seed=seed, alpha=alpha, dtype="float32",
        transcript_cache_dir=args.transcript_cache_dir,
    )  # fmt: skip


def kept(path: Path, settings: dict, compute: Callable[[], dict]) -> dict:
    """`compute()`'s result, kept at `path` with the `settings` that shaped it, so that a rerun resumes. A result kept
    under other settings is refused, never reused: it would be paired with results it was not measured beside."""
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") != settings:
            raise ValueError(
                f"{path} was measured with {stored.get('settings')}, not with this run's {settings}: give another "
                "--work_dir, or delete it to measure again."
            )
        return stored
    result = {"settings": settings, **compute()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result


def evaluation_settings(args: ReproduceArguments) -> dict:
    """What shapes an evaluation's answers: the starting model, the items and the voices."""
    return {"model": args.model, "eval_items": args.eval_items, "voices": args.voices}


def answers(model: str, systems: list[str], work: Path, args: ReproduceArguments) -> dict[str, list]:
    """Each system's per-item answers on the built-in set (1.0 right, 0.0 wrong): a text system's under its own
    name, a speech system's as `system/voice` for every voice; `item_ids` names the items, in order."""
    text = [system for system in systems if system not in SPEECH_SYSTEMS]
    speech = [system for system in systems if system in SPEECH_SYSTEMS]
    found = {}
    for index, voice in enumerate(args.voices):
        asked = speech + (text if index == 0 else [])
        if not asked:
            continue
        backend, name = HELD_OUT_VOICES[voice]
        report = run(
            EvalArguments(
                model=model,
                base_model="embedded:smollm2-135m-instruct",
                systems=asked,
                limit=args.eval_items,
                tts_backend=backend,
                tts_voice=name,
                dtype="float32",
                distribution_metrics=False,
                transcript_cache_dir=args.transcript_cache_dir,
                output_dir=str(work / f"eval-{voice}"),
            )  # fmt: skip
        )["tasks"]["offline"]
        item_ids = [item["id"] for item in report["items"]]
        if found.setdefault("item_ids", item_ids) != item_ids:
            raise ValueError(
                f"The {voice} evaluation of {model} answered other items than the first voice's."
            )
        for system in asked:
            key = f"{system}/{voice}" if system in SPEECH_SYSTEMS else system
            found[key] = [float(item[system] == item["answer"]) for item in report["items"]]
    return found


def reference_answers(args: ReproduceArguments, work: Path) -> dict[str, list[float]]:
    """What no arm changes, and where every arm starts: SmolLM2 on text, the cascade, and the starting model."""
    systems = ["base_text", "salad_text", "prior", "salad_speech", "cascade"]
    return kept(
        work / "reference.json",
        evaluation_settings(args),
        lambda: answers(args.model, systems, work / "reference", args),
    )


def same_items(*answer_sets: dict) -> None:
    """A `ValueError` unless every set of answers is over the same items in the same order: pairs must be pairs."""
    if len({tuple(found["item_ids"]) for found in answer_sets}) > 1:
        raise ValueError("These results answer different items (or in another order): they cannot be paired.")


def over_seeds(seed_answers: list[dict], key: str) -> np.ndarray:
    """`[items]`: the arm's answers to each item, averaged over its seeds (the callers check that they share items)."""
    return np.mean([found[key] for found in seed_answers], axis=0)


def verdict(difference: dict, per_seed: list[float], expected_sign: int) -> str:
    """How an arm-minus-control difference bears on a claim that predicts its sign: "reproduced" when the paired
    interval over the items excludes 0 on the predicted side and every seed's own difference has the predicted
    sign (the interval alone leaves out how much the seeds' training varies), "direction only" when the seeds'
    mean has it, else "not reproduced"."""
    low, high = difference["ci95"]
    excludes_zero = low > 0 if expected_sign > 0 else high < 0
    if excludes_zero and all(value * expected_sign > 0 for value in per_seed):
        return "reproduced"
    if difference["value"] * expected_sign > 0:
        return "direction only"
    return "not reproduced"


def text_kept(difference: dict) -> bool:
    """Issue 33's criterion for keeping the text LLM: within 1 point of it, with a paired interval covering 0."""
    low, high = difference["ci95"]
    return abs(difference["value"]) <= 0.01 and low <= 0 <= high


def arm_summary(runs: list[dict], reference: dict, voices: list[str]) -> dict:
    """One arm over its seeds: accuracy per seed and of the seed-averaged answers, against the cascade and, on
    text, against SmolLM2; M and F before and after on the held-out rows."""
    same_items(reference, *(seed_run["answers"] for seed_run in runs))
    summary = {"seeds": len(runs)}
    for key in ["salad_text", *(f"salad_speech/{voice}" for voice in voices)]:
        answers_per_seed = [seed_run["answers"][key] for seed_run in runs]
        mean = over_seeds([seed_run["answers"] for seed_run in runs], key)
        baseline = "base_text" if key == "salad_text" else key.replace("salad_speech", "cascade")
        summary[key] = {
            "accuracy_per_seed": [float(np.mean(values)) for values in answers_per_seed],
            "accuracy": accuracy_summary(mean)["accuracy"],
            f"minus_{baseline.split('/')[0]}": paired_difference(mean, np.asarray(reference[baseline])),
        }
    for quantity in ("misalignment", "forgetting"):
        summary[quantity] = {
            "before": [seed_run["before"][quantity] for seed_run in runs],
            "after": [seed_run["after"][quantity] for seed_run in runs],
        }
    return summary


def compare_arms(arm: list[dict], control: list[dict], voices: list[str], items: list | None = None) -> dict:
    """`arm` minus `control` on each accuracy (over the item indices `items`, or all): the seeds' answers averaged
    item by item, then paired over the items; and seed k of the arm minus seed k of the control, which shows how
    much the difference moves with training's randomness."""
    keys = ["salad_text", *(f"salad_speech/{voice}" for voice in voices)]
    chosen = slice(None) if items is None else np.asarray(items)
    arm_answers, control_answers = [r["answers"] for r in arm], [r["answers"] for r in control]
    same_items(*arm_answers, *control_answers)
    return {
        key: {
            **paired_difference(
                over_seeds(arm_answers, key)[chosen], over_seeds(control_answers, key)[chosen]
            ),
            "per_seed": [
                float(np.mean(np.asarray(a[key])[chosen]) - np.mean(np.asarray(c[key])[chosen]))
                for a, c in zip(arm_answers, control_answers)
            ],
        }
        for key in keys
    }


def seeds_in_direction(arm: dict, control: dict, quantity: str) -> str:
    """How many seeds end with a lower `quantity` (M or F) in the arm than in the control, seed for seed."""
    lower = sum(a < c for a, c in zip(arm[quantity]["after"], control[quantity]["after"]))
    return f"{lower} of {len(arm[quantity]['after'])}"


def continuation(
    args: ReproduceArguments, data: dict, train_file: Path, run_dir: Path, seed: int, alpha: float = 1.0
) -> dict:
    """One arm's seed: the continuation, then its answers on the built-in set (kept, so a rerun resumes)."""

    def measure() -> dict:
        recipe = recipe_arguments(args, seed, alpha)
        log, before, after = continue_training(
            data["shipped"], train_file, data["pool"], data["held_out"], run_dir, recipe
        )
        steps = [entry for entry in log if "loss" in entry]
        return {
            "before": before,
            "after": after,
            "answers": answers(str(run_dir / "model"), ["salad_text", "salad_speech"], run_dir, args),
            "train_loss": log[-1]["train_loss"],  # the run's mean, logged at its end
            # the last logged step's KL where the arm distils (alpha 0 logs none)
            "final_train_divergence": steps[-1].get("divergence") if steps else None,
        }

    settings = {**evaluation_settings(args), "train_file": train_file, "train_steps": args.train_steps,
                "seed": seed, "alpha": alpha, "pool_sentences": args.pool_sentences}  # fmt: skip
    return kept(run_dir / "result.json", settings, measure)


def distillation_vs_nll(args: ReproduceArguments, data: dict, reference: dict, work: Path) -> dict:
    arms = {
        alpha: [
            continuation(args, data, data["stage2_mix"], work / f"alpha{alpha:g}-seed{seed}", seed, alpha)
            for seed in args.seeds
        ]
        for alpha in (1.0, 0.0)
    }
    distilled, nll = (arm_summary(arms[alpha], reference, args.voices) for alpha in (1.0, 0.0))
    return {
        "alpha=1": distilled,
        "alpha=0": nll,
        "alpha1_minus_alpha0": compare_arms(arms[1.0], arms[0.0], args.voices),
        "forgetting_lower_with_distillation": seeds_in_direction(distilled, nll, "forgetting"),
        # the claim is that distillation keeps the text LLM: a margin against SmolLM2, not a difference of arms
        "text_kept": {
            arm: text_kept(summary["salad_text"]["minus_base_text"])
            for arm, summary in (("alpha=1", distilled), ("alpha=0", nll))
        },
    }


def domain_budget(selection_dir: Path, questions: np.ndarray, domains: list[str]) -> dict:
    """Where a selection's budget went among the task set's domains: each question is placed in the cluster whose
    centroid is nearest (cosine), and a domain's share is its questions' clusters' share of the selected seconds,
    relative to an even spread over the clusters (1.0)."""
    report = json.loads((selection_dir / "report.json").read_text())
    with np.load(selection_dir / "clusters.npz") as clusters:
        centroids = clusters["centroids"]
    centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    nearest = (questions @ centroids.T).argmax(axis=1)
    seconds = np.array([cluster["seconds"] for cluster in report["clusters"]])
    share = seconds / seconds.sum() * len(seconds)
    return {
        domain: {
            "budget_vs_even": float(share[nearest[[d == domain for d in domains]]].mean()),
            "clusters": dict(Counter(int(c) for c in nearest[[d == domain for d in domains]])),
        }
        for domain in sorted(set(domains))
    }


def clusters_table(selection_dir: Path) -> list[dict]:
    """Each cluster's M(c), weights, the budget it got, and what it holds."""
    report = json.loads((selection_dir / "report.json").read_text())
    keys = (
        "cluster",
        "size",
        "misalignment",
        "web_weight",
        "target_weight",
        "samples",
        "seconds",
        "example_texts",
    )
    return [{key: cluster[key] for key in keys} for cluster in report["clusters"]]


def pool_reach(pool: list[str], items: list, encode, own_kind: list[str]) -> dict:
    """How near the text pool comes to each domain's questions: per domain the mean cosine similarity of a question
    to its nearest pool sentence, with examples, next to the same for sentences of the pool's own kind (held-out rows
    drawn from it), the yardstick of "near"."""
    pool_vectors = encode(pool)
    questions = encode([item.spoken_text for item in items])
    nearest = questions @ pool_vectors.T
    best, index = nearest.max(axis=1), nearest.argmax(axis=1)
    own = (encode(own_kind) @ pool_vectors.T).max(axis=1)
    reach = {"pool_sentences": len(pool), "own_kind_similarity": float(own.mean()), "domains": {}}
    for domain in sorted({item.domain for item in items}):
        chosen = [k for k, item in enumerate(items) if item.domain == domain]
        reach["domains"][domain] = {
            "similarity": float(best[chosen].mean()),
            "examples": [
                {"question": items[k].spoken_text, "nearest": pool[index[k]], "similarity": float(best[k])}
                for k in chosen[:2]
            ],
        }
    return reach


def active_vs_uniform(args: ReproduceArguments, data: dict, reference: dict, work: Path) -> dict:
    selections, arms = {}, {}
    for gamma in (5.0, 0.0):
        folder = work / f"stage2-gamma{gamma:g}"
        if not (folder / "report.json").exists():  # written last: a selection cut short runs again
            stage2_selection(
                data["shipped"], data["pool"], data["train"], folder, recipe_arguments(args, 0), gamma,
                cache_dir=work / "stage2-cache",
            )  # fmt: skip
        selections[gamma] = folder
        arms[gamma] = [
            continuation(args, data, folder / "synthetic.jsonl", work / f"gamma{gamma:g}-seed{seed}", seed)
            for seed in args.seeds
        ]
    items = load_offline_tasks()[: args.eval_items]
    selected_with = json.loads((selections[5.0] / "report.json").read_text())["arguments"]
    encode = sentence_encoder(
        selected_with["embedder"], selected_with["embedder_dtype"]
    )  # the clusters' space
    questions = encode([item.spoken_text for item in items])
    domains = [item.domain for item in items]
    budget = {gamma: domain_budget(folder, questions, domains) for gamma, folder in selections.items()}
    # targeted: more than an even share of gamma 5's budget, and more than gamma 0 gave it
    targeted = [
        domain
        for domain, share in budget[5.0].items()
        if share["budget_vs_even"] > max(1.0, budget[0.0][domain]["budget_vs_even"])
    ]
    on_targeted = [k for k, domain in enumerate(domains) if domain in targeted]
    pool = [json.loads(line)["text"] for line in data["pool"].read_text().splitlines() if line.strip()]
    gamma5, gamma0 = (arm_summary(arms[g], reference, args.voices) for g in (5.0, 0.0))
    return {
        "gamma=5": gamma5,
        "gamma=0": gamma0,
        "gamma5_minus_gamma0": compare_arms(arms[5.0], arms[0.0], args.voices),
        "targeted_domains": targeted,
        "gamma5_minus_gamma0_on_targeted_domains": compare_arms(
            arms[5.0], arms[0.0], args.voices, on_targeted
        )
        if on_targeted
        else None,
        "misalignment_lower_with_gamma5": seeds_in_direction(gamma5, gamma0, "misalignment"),
        "clusters": {f"gamma={g:g}": clusters_table(folder) for g, folder in selections.items()},
        "budget_by_domain": {f"gamma={g:g}": value for g, value in budget.items()},
        "pool_reach": pool_reach(pool, items, encode, [row["text"] for row in data["held_out"]]),
    }


def speech_minutes(checkpoint: Path) -> float | None:
    """The minutes of speech trained on up to `checkpoint`, as last logged (every step in the curve's run)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    logged = [
        entry["speech_minutes_seen"] for entry in state["log_history"] if "speech_minutes_seen" in entry
    ]
    return logged[-1] if logged else None


def curve_point(found: dict, reference: dict, voices: list[str]) -> dict:
    """One point of the curve: per voice, spoken accuracy, the gap to the same model on text, and spoken minus the
    cascade, paired over the items."""
    text = np.asarray(found["salad_text"])
    point = {"text_accuracy": float(text.mean())}
    for voice in voices:
        speech = np.asarray(found[f"salad_speech/{voice}"])
        point[voice] = {
            "accuracy": accuracy_summary(speech),
            "gap_to_text": paired_difference(text, speech),
            "minus_cascade": paired_difference(speech, np.asarray(reference[f"cascade/{voice}"])),
        }
    return point


def gap_vs_minutes(args: ReproduceArguments, data: dict, reference: dict, work: Path) -> dict:
    """One continuation (seed 0, alpha 1, the gamma 5 mix) with evenly spaced checkpoints, each evaluated."""
    run_dir = work / "curve"
    every = args.curve_steps // args.curve_points
    settings = {
        **evaluation_settings(args),
        "curve_steps": args.curve_steps,
        "curve_points": args.curve_points,
    }

    def train() -> dict:
        continue_training(
            data["shipped"], data["stage2_mix"], data["pool"], data["held_out"], run_dir,
            recipe_arguments(args, 0, steps=args.curve_steps), save_steps=every,
        )  # fmt: skip
        return {}

    kept(run_dir / "trained.json", settings, train)
    points = {"0": {"step": 0, "speech_minutes": 0.0, **curve_point(reference, reference, args.voices)}}
    for step in range(every, args.curve_steps + 1, every):
        checkpoint = run_dir / "trainer" / f"checkpoint-{step}"
        found = kept(
            checkpoint / "answers.json",
            settings,
            lambda checkpoint=checkpoint: answers(
                str(checkpoint), ["salad_text", "salad_speech"], checkpoint, args
            ),
        )
        same_items(reference, found)
        points[str(step)] = {
            "step": step,
            "speech_minutes": speech_minutes(checkpoint),
            **curve_point(found, reference, args.voices),
        }
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


def commit() -> str:
    """The commit measured on, `+dirty` where the work tree differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    return head + ("+dirty" if dirty else "")


def interval(difference: dict) -> str:
    low, high = difference["ci95"]
    return f"{100 * difference['value']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def arm_rows(name: str, summary: dict, voices: list[str]) -> str:
    speech = " | ".join(
        f"{100 * summary[f'salad_speech/{v}']['accuracy']:.1f} ({interval(summary[f'salad_speech/{v}']['minus_cascade'])})"
        for v in voices
    )
    text = summary["salad_text"]
    m, f = summary["misalignment"], summary["forgetting"]
    return (
        f"| {name} | {np.mean(m['before']):.3f} -> {np.mean(m['after']):.3f} | "
        f"{np.mean(f['before']):.3f} -> {np.mean(f['after']):.3f} | "
        f"{100 * text['accuracy']:.1f} ({interval(text['minus_base_text'])}) | {speech} |"
    )


def comparison_table(claim: dict, arms: tuple[str, str], difference: str, voices: list[str]) -> list[str]:
    header = " | ".join(f"speech `{v}` (minus the cascade)" for v in voices)
    lines = [
        f"| arm (seeds averaged) | M before -> after | F before -> after | text (minus SmolLM2) | {header} |",
        "|---|---|---|---|" + "---|" * len(voices),
        *(arm_rows(arm, claim[arm], voices) for arm in arms),
    ]
    paired_row = " | ".join(interval(claim[difference][f"salad_speech/{v}"]) for v in voices)
    lines.append(f"| {difference} | | | {interval(claim[difference]['salad_text'])} | {paired_row} |")
    per_seed = " | ".join(seed_values(claim[difference][f"salad_speech/{v}"]) for v in voices)
    lines.append(f"| ... seed by seed | | | {seed_values(claim[difference]['salad_text'])} | {per_seed} |")
    return lines


def seed_values(difference: dict) -> str:
    return ", ".join(f"{100 * value:+.1f}" for value in difference["per_seed"])


def speech_verdicts(differences: dict, voices: list[str]) -> str:
    """The claim that the arm answers spoken questions better than its control, voice by voice."""
    return "; ".join(
        f"`{v}`: {verdict(differences[f'salad_speech/{v}'], differences[f'salad_speech/{v}']['per_seed'], +1)}"
        for v in voices
    )


def provenance(results: dict, claim: str) -> str:
    measured = results["measured"][claim]
    machine = measured["machine"]
    return (
        f"Measured on {measured['model']} at commit {measured['commit']} ({machine['cpu']}, {machine['threads']} "
        f"threads, torch {machine['torch']})."
    )


def claim_voices(results: dict, claim: str) -> list[str]:
    return results["measured"][claim]["arguments"]["voices"]


def markdown(results: dict) -> str:
    claims = results["claims"]
    lines = ["# The paper's claims at small scale", ""]
    if "distillation_vs_nll" in claims:
        claim, voices = claims["distillation_vs_nll"], claim_voices(results, "distillation_vs_nll")
        kept_text = ", ".join(f"{arm} {'yes' if kept else 'no'}" for arm, kept in claim["text_kept"].items())
        lines += ["## distillation_vs_nll", "", provenance(results, "distillation_vs_nll"), "",
                  *comparison_table(claim, ("alpha=1", "alpha=0"), "alpha1_minus_alpha0", voices), "",
                  f"F lower with distillation in {claim['forgetting_lower_with_distillation']} seeds. Text kept "
                  f"(within 1 point of SmolLM2, interval covering 0): {kept_text}. Speech better with "
                  f"distillation: {speech_verdicts(claim['alpha1_minus_alpha0'], voices)}.", ""]  # fmt: skip
    if "active_vs_uniform" in claims:
        claim, voices = claims["active_vs_uniform"], claim_voices(results, "active_vs_uniform")
        lines += ["## active_vs_uniform", "", provenance(results, "active_vs_uniform"), "",
                  *comparison_table(claim, ("gamma=5", "gamma=0"), "gamma5_minus_gamma0", voices), "",
                  f"M lower with gamma 5 in {claim['misalignment_lower_with_gamma5']} seeds. Speech better with "
                  f"gamma 5: {speech_verdicts(claim['gamma5_minus_gamma0'], voices)}. Targeted domains: "
                  f"{', '.join(claim['targeted_domains']) or 'none'}.", ""]  # fmt: skip
        on_targeted = claim["gamma5_minus_gamma0_on_targeted_domains"]
        if on_targeted:
            lines += ["On the targeted domains, gamma 5 minus gamma 0: "
                      + "; ".join(f"{key} {interval(value)}" for key, value in on_targeted.items())
                      + f" ({speech_verdicts(on_targeted, voices)}).", ""]  # fmt: skip
        lines += ["| domain | budget vs even, gamma 5 | gamma 0 | nearest pool sentence, mean cosine |",
                  "|---|---|---|---|"]  # fmt: skip
        reach = claim["pool_reach"]
        for domain, value in claim["budget_by_domain"]["gamma=5"].items():
            lines.append(f"| {domain} | {value['budget_vs_even']:.2f} | "
                         f"{claim['budget_by_domain']['gamma=0'][domain]['budget_vs_even']:.2f} | "
                         f"{reach['domains'][domain]['similarity']:.2f} |")  # fmt: skip
        lines += [
            "",
            f"Pool-like held-out sentences: nearest pool sentence at {reach['own_kind_similarity']:.2f}.",
            "",
        ]
    if "gap_vs_minutes" in claims:
        voices = claim_voices(results, "gap_vs_minutes")
        lines += ["## gap_vs_minutes", "", provenance(results, "gap_vs_minutes"), "",
                  "| step | minutes of speech | text | " + " | ".join(
                      f"speech `{v}` | gap to text | minus the cascade" for v in voices) + " |",
                  "|---|---|---|" + "---|---|---|" * len(voices)]  # fmt: skip
        for point in sorted(claims["gap_vs_minutes"].values(), key=lambda p: p["step"]):
            cells = " | ".join(
                f"{100 * point[v]['accuracy']['accuracy']:.1f} | {interval(point[v]['gap_to_text'])} | "
                f"{interval(point[v]['minus_cascade'])}"
                for v in voices
            )
            minutes = point["speech_minutes"]
            lines.append(f"| {point['step']} | {'-' if minutes is None else f'{minutes:.1f}'} | "
                         f"{100 * point['text_accuracy']:.1f} | {cells} |")  # fmt: skip
        lines.append("")
    if "latency" in claims:
        lines += [
            "## latency",
            "",
            provenance(results, "latency"),
            "",
            "| system | TTFT median (s) | TTFT p90 (s) | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        for system, value in claims["latency"].items():
            lines.append(f"| {system} | {value['ttft_median_seconds']:.3f} | {value['ttft_p90_seconds']:.3f} | "
                         f"{value['peak_rss_mb']:.0f} |")  # fmt: skip
        lines.append("")
    lines.append(
        "Wall time per claim (s): " + ", ".join(f"{k} {v}" for k, v in results["timings_seconds"].items())
    )
    return "\n".join(lines) + "\n"


def plot(results: dict, output: Path) -> list[str]:
    """Spoken accuracy per arm and voice (both comparisons, each seed a dot), and the curve against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claims, written = results["claims"], []
    for claim, arms in (
        ("distillation_vs_nll", ("alpha=1", "alpha=0")),
        ("active_vs_uniform", ("gamma=5", "gamma=0")),
    ):
        if claim not in claims:
            continue
        voices = claim_voices(results, claim)
        figure, axes = plt.subplots(1, len(voices) + 1, figsize=(3 * (len(voices) + 1), 3))
        for axis, key in zip(axes, ["salad_text", *(f"salad_speech/{v}" for v in voices)]):
            for x, arm in enumerate(arms):
                per_seed = claims[claim][arm][key]["accuracy_per_seed"]
                axis.scatter([x] * len(per_seed), [100 * a for a in per_seed])
            axis.set_xticks(range(len(arms)), arms)
            axis.set_title(key, fontsize=8)
        axes[0].set_ylabel("accuracy (%)")
        figure.tight_layout()
        figure.savefig(output / f"{claim}.png", dpi=120)
        plt.close(figure)
        written.append(f"{claim}.png")
    if "gap_vs_minutes" in claims:
        points = sorted(claims["gap_vs_minutes"].values(), key=lambda p: p["step"])
        minutes = [p["speech_minutes"] or 0.0 for p in points]
        figure, axis = plt.subplots(figsize=(5, 3))
        axis.plot(minutes, [100 * p["text_accuracy"] for p in points], marker="o", label="text")
        for voice in claim_voices(results, "gap_vs_minutes"):
            axis.plot(minutes, [100 * p[voice]["accuracy"]["accuracy"] for p in points], marker="o",
                      label=f"speech, {voice}")  # fmt: skip
            cascade = 100 * (
                points[0][voice]["accuracy"]["accuracy"] - points[0][voice]["minus_cascade"]["value"]
            )
            axis.axhline(cascade, linestyle="--", linewidth=0.8, label=f"cascade, {voice}")
        axis.set_xlabel("minutes of speech trained on")
        axis.set_ylabel("accuracy (%)")
        axis.legend(fontsize=6)
        figure.tight_layout()
        figure.savefig(output / "gap_vs_minutes.png", dpi=120)
        plt.close(figure)
        written.append("gap_vs_minutes.png")
    return written


def prepare_data(args: ReproduceArguments, work: Path) -> dict:
    """Fresh rows (training voices) and held-out rows (held-out voices), the Stage II pool, and gamma 5's mix."""
    data = {"shipped": Path(resolve_checkpoint(args.model))}
    data["train"], held_out_file, data["pool"] = fresh_data(work, recipe_arguments(args, 0))
    data["held_out"] = load_rows_list(held_out_file)
    folder = work / "stage2-gamma5"
    if not (folder / "report.json").exists():  # written last: a selection cut short runs again
        stage2_selection(
            data["shipped"], data["pool"], data["train"], folder, recipe_arguments(args, 0),
            cache_dir=work / "stage2-cache",
        )  # fmt: skip
    data["stage2_mix"] = folder / "train_mix.jsonl"
    return data


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ReproduceArguments).parse_args_into_dataclasses(args=argv)
    output, work = Path(args.output_dir), Path(args.work_dir)
    output.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results = {"measured": {}, "claims": {}, "timings_seconds": {}}
    previous = output / "results.json"
    if previous.exists():  # claims run separately accumulate in one results file, each with its provenance
        stored = json.loads(previous.read_text())
        if "measured" in stored:  # a file from before claims recorded what they were measured on is replaced
            results.update(stored)
    provenance = {"model": args.model, "commit": commit(), "machine": machine()}
    data, reference = {}, {}
    if {"distillation_vs_nll", "active_vs_uniform", "gap_vs_minutes"} & set(args.claims):
        start = time.perf_counter()
        data, reference = prepare_data(args, work), reference_answers(args, work)
        results["timings_seconds"]["data_and_reference"] = round(time.perf_counter() - start, 1)
    for claim in args.claims:
        start = time.perf_counter()
        results["measured"][claim] = {**provenance, "arguments": asdict(args)}
        if claim == "latency":
            results["claims"][claim] = latency(args)
        else:
            measure = {"distillation_vs_nll": distillation_vs_nll, "active_vs_uniform": active_vs_uniform,
                       "gap_vs_minutes": gap_vs_minutes}[claim]  # fmt: skip
            results["claims"][claim] = measure(args, data, reference, work)
        results["timings_seconds"][claim] = round(time.perf_counter() - start, 1)
        (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["plots"] = plot(results, output)
    (output / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (output / "results.md").write_text(markdown(results))
    return results


if __name__ == "__main__":
    main()
