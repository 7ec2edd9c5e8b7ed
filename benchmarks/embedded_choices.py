"""The shipped embedded default's choices on the first items of the built-in task set: a fingerprint of what it
does, taken before a refactor and checked after it (issue 32: "the same choices on the first 48 items").

    python benchmarks/embedded_choices.py            # writes benchmarks/results/embedded_choices.json
    python benchmarks/embedded_choices.py --check    # exit status 1 when a choice differs from that file

Each item is spoken by the held-out espeak-ng `en-us` voice and scored as `salad-eval` scores it (zero-shot, the
length-normalized log-probability of each option), in fp32 so that the fingerprint does not depend on whether the
CPU has native bf16. `--check` also prints the largest difference of any option's score, for information: a
choice is the contract, the scores' last digits follow the kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eval.scoring import score_speech_items, text_prompt
from eval.speech import synthesize_items
from eval.tasks import load_offline_tasks
from trainers.assets import load_salad

RESULTS = Path(__file__).resolve().parent / "results" / "embedded_choices.json"


def fingerprint(num_items: int) -> dict:
    items = load_offline_tasks()[:num_items]
    model, processor = load_salad("embedded:salad", torch.float32)
    clips = synthesize_items(items, processor.sampling_rate, voice="en-us")
    with torch.no_grad():
        scores = score_speech_items(model, processor, items, clips, text_prompt(processor.audio_token, ""))
    return {
        "model": "embedded:salad",
        "voice": "espeak-ng en-us",
        "dtype": "float32",
        "items": [
            {"id": score.item_id, "choice": score.choice(), "logprob_norm": score.logprob_norm}
            for score in scores
        ],
    }


def compare(reference: dict, current: dict) -> list[str]:
    """Items whose choice changed, described; the largest score difference is printed."""
    changed, largest = [], 0.0
    for before, after in zip(reference["items"], current["items"], strict=True):
        if before["id"] != after["id"]:
            raise ValueError(f"Item {before['id']!r} became {after['id']!r}: the task set itself changed.")
        largest = max(largest, *(abs(a - b) for a, b in zip(before["logprob_norm"], after["logprob_norm"])))
        if before["choice"] != after["choice"]:
            changed.append(f"{before['id']}: option {before['choice']} -> {after['choice']}")
    print(f"largest difference of an option's score: {largest:.2e}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_items", type=int, default=48)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed file instead of writing it"
    )
    args = parser.parse_args(argv)
    current = fingerprint(args.num_items)
    if not args.check:
        RESULTS.write_text(json.dumps(current, indent=1) + "\n")
        print(f"{len(current['items'])} choices written to {RESULTS}")
        return 0
    changed = compare(json.loads(RESULTS.read_text()), current)
    print(f"{len(current['items']) - len(changed)} of {len(current['items'])} choices as committed")
    for line in changed:
        print("  changed:", line)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
