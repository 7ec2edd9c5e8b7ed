"""Does the model hear the words? Greedy "repeat" WER of a SALAD model next to Whisper's own WER on the same clips.

    python benchmarks/alignment/repeat_wer.py --model embedded:salad --chat \
        --rows tts-held-out-voices=data/tts/eval.jsonl asterisk-human=data/asterisk/eval.jsonl \
        --output benchmarks/alignment/exp09-asr-chat/repeat_wer.json

For each set of held-out rows (jsonl in the `trainers.distillation.data` schema: `text`, `audio`), the model is asked to
repeat each clip (`trainers.distillation.probes`: the teacher-forced content gain against shuffled audio, and the greedy
repeat), and the Whisper checkpoint that is the model's own encoder transcribes the same clips (the cascade's
ASR, `eval.speech.transcribe`). Whisper's WER is the floor the encoder's features suggest: the adapter reads those
features, so a repeat WER near it means the adapter passes on what the encoder heard. Every clip's reference,
repeat and transcript are written out, so the numbers can be read against the words.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eval.speech import transcribe
from trainers.assets import load_salad
from trainers.distillation.probes import (
    RepeatPrompt,
    greedy_repeats,
    load_probe_rows,
    run_probes,
    word_error_rate,
)


def parse_row_sets(specs: list[str]) -> dict[str, str]:
    """`name=path` (or a bare path, named by its parent folder) for each set of rows."""
    sets = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        sets[name or Path(spec).parent.name] = path
    return sets


def measure(model, processor, rows, prompt: RepeatPrompt, asr_model: str) -> dict:
    """The probes, the greedy repeats and the ASR transcripts of one set of rows."""
    results = run_probes(model, processor, rows, with_generation=False, prompt=prompt)
    references = [row.text for row in rows]
    repeats = greedy_repeats(model, processor, rows, prompt=prompt)
    transcripts = transcribe(asr_model, [row.audio for row in rows], processor.sampling_rate)
    return {
        "num_rows": len(rows),
        "repeat_wer": word_error_rate(references, repeats),
        "asr_wer": word_error_rate(references, transcripts),
        **results,
        "clips": [
            {"reference": reference, "repeat": repeat, "asr": transcript}
            for reference, repeat, transcript in zip(references, repeats, transcripts)
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="A SALAD checkpoint, `embedded:salad`, `embedded:untrained` or a Hub id.",
    )
    parser.add_argument(
        "--rows", nargs="+", required=True, help="Held-out rows: name=path.jsonl, one per set."
    )
    parser.add_argument(
        "--num_rows", type=int, default=32, help="Rows per set, spread evenly over each file."
    )
    parser.add_argument("--chat", action="store_true", help="Ask in the chat template (chat_format models).")
    parser.add_argument(
        "--instruction", default="Repeat what was said.", help="The chat prompt's instruction."
    )
    parser.add_argument(
        "--asr_model", default="embedded:whisper-tiny.en", help="Whisper for the reference WER."
    )
    parser.add_argument("--output", required=True, help="Write the results here as JSON.")
    args = parser.parse_args(argv)

    model, processor = load_salad(args.model, dtype=torch.float32)
    prompt = RepeatPrompt(chat=args.chat, instruction=args.instruction)
    results = {"model": args.model, "chat": args.chat, "sets": {}}
    for name, path in parse_row_sets(args.rows).items():
        rows = load_probe_rows(path, args.num_rows, processor.sampling_rate)
        results["sets"][name] = {"rows": path, **measure(model, processor, rows, prompt, args.asr_model)}
        numbers = {k: round(v, 3) for k, v in results["sets"][name].items() if isinstance(v, float)}
        print(name, numbers)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
