"""Choose the `"ctc"` adapter's inference settings on held-out rows, never on the task set.

    python benchmarks/alignment/ctc_settings.py --model runs/embedded-default-ctc \
        --output benchmarks/alignment/exp06-ctc/ctc_settings.json

On rows in voices training never used (`data/tts/eval.jsonl`, other sentences than any task item): for each
blank threshold, the classifier's own WER and the LLM's teacher-forced transcript NLL after "Repeat what was
said:" (with the shuffled-audio control); then, at the best threshold, the same NLL for each `top_k`. The
chosen values go into the exported config (`adapter_ctc_blank_threshold`, `adapter_ctc_top_k`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trainers.assets import load_salad
from trainers.data import decode_row_audio
from trainers.probes import (
    ProbeRow,
    ctc_transcripts,
    load_probe_rows,
    shuffled_audio,
    transcript_scores,
    word_error_rate,
)


def selection_rows(path: str, count: int, sampling_rate: int) -> list[ProbeRow]:
    """`count` rows halfway between those the probes report on (`load_probe_rows`), so settings are never
    chosen on the rows their WER is reported for."""
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    reported = {row.text for row in load_probe_rows(path, count, sampling_rate)}
    step = len(lines) / count
    rows = [json.loads(lines[int(step * (k + 0.5))]) for k in range(count)]
    return [
        ProbeRow(row["text"], decode_row_audio(row["audio"], sampling_rate))
        for row in rows
        if row["text"] not in reported
    ]


def measure(model, processor, rows: list[ProbeRow]) -> dict:
    nll, accuracy = transcript_scores(model, processor, rows)
    control_nll, _ = transcript_scores(model, processor, shuffled_audio(rows))
    wer = word_error_rate([row.text for row in rows], ctc_transcripts(model, processor, rows))
    return {
        "ctc_wer": wer,
        "transcript_nll": nll,
        "content_gain_nll": control_nll - nll,
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", default="data/tts/eval.jsonl")
    parser.add_argument("--num_rows", type=int, default=32)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--top_ks", type=int, nargs="+", default=[1, 4, 8, 32])
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    model, processor = load_salad(args.model, torch.float32)
    rows = selection_rows(args.rows, args.num_rows, processor.sampling_rate)
    sweep = []
    for threshold in args.thresholds:
        model.adapter.blank_threshold = threshold
        sweep.append(
            {"blank_threshold": threshold, "top_k": model.adapter.top_k, **measure(model, processor, rows)}
        )
        print(sweep[-1], flush=True)
    best = min(sweep, key=lambda entry: entry["ctc_wer"])
    model.adapter.blank_threshold = best["blank_threshold"]
    for top_k in args.top_ks:
        model.adapter.top_k = top_k
        sweep.append(
            {"blank_threshold": best["blank_threshold"], "top_k": top_k, **measure(model, processor, rows)}
        )
        print(sweep[-1], flush=True)
    chosen = min(
        (entry for entry in sweep if entry["blank_threshold"] == best["blank_threshold"]),
        key=lambda entry: entry["transcript_nll"],
    )
    report = {"model": args.model, "rows": args.rows, "num_rows": len(rows), "sweep": sweep, "chosen": chosen}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print("chosen:", chosen)


if __name__ == "__main__":
    main()
