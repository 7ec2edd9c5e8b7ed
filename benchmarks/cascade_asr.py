"""The harness's cascade ASR, two ways, on the same built-in questions: Whisper tiny.en's ASR pipeline one clip at a
time (`salad-eval --asr_model embedded:whisper-tiny.en`), and the shipped model's own Whisper read over 30 s in
batches (`own_whisper_transcribe`, the harness's default for a model that hears through Whisper's decoder).

    python benchmarks/cascade_asr.py     # alone on the machine; writes benchmarks/results/cascade_asr.json

Both are timed from the arrays to the texts, in one process, after one clip that warms each up; the JSON also says on
how many clips the two texts are the same, and lists those where they differ.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from latency import machine, questions

from eval.speech import own_whisper_transcribe, transcribe
from trainers.assets import load_salad

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cascade_asr.json"


def timed(function, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = function(*args)
    return texts, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--questions", type=int, default=48, help="Built-in questions, spoken in espeak-ng en-us."
    )
    parser.add_argument(
        "--batch_size", type=int, default=16, help="Clips a batch for the model's own Whisper."
    )
    parser.add_argument("--output", default=str(RESULTS), help="Where the JSON results go.")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    clips = questions(args.questions + 1)
    warm_up, clips = clips[:1], clips[1:]
    model, processor = load_salad("embedded:salad", torch.float32)
    own_whisper_transcribe(model, processor, warm_up, args.batch_size)
    own, own_seconds = timed(own_whisper_transcribe, model, processor, clips, args.batch_size)
    transcribe("embedded:whisper-tiny.en", warm_up, 16000)
    pipeline, pipeline_seconds = timed(transcribe, "embedded:whisper-tiny.en", clips, 16000)
    results = {
        "command": "python benchmarks/cascade_asr.py",
        "machine": machine(),
        "clips": len(clips),
        "batch_size": args.batch_size,
        "seconds_per_clip": {
            "asr_pipeline": pipeline_seconds / len(clips),
            "own_whisper": own_seconds / len(clips),
        },
        "speedup": pipeline_seconds / own_seconds,
        "same_text": sum(a == b for a, b in zip(own, pipeline)),
        "different": [
            {"question": index + 1, "own_whisper": a, "asr_pipeline": b}
            for index, (a, b) in enumerate(zip(own, pipeline))
            if a != b
        ],
    }
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
