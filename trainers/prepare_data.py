"""Build training rows (the `trainers.data` schema) from speech that is installed on this machine.

    python -m trainers.prepare_data --output_dir data/asterisk

Writes the Asterisk English prompts (real human speech, one US-English speaker, CC-BY-SA-3.0, from Debian
`asterisk-core-sounds-en-g722` + `asterisk-core-sounds-en`) as 16 kHz WAV files with `train.jsonl` and
`eval.jsonl` (a seeded hold-out split). Rows carry no word timestamps, so the trainer uses them as
whole-utterance speech followed by the configured text continuation.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
from transformers import HfArgumentParser

from hub_scripts.embedded_assets import asterisk_prompts


@dataclass
class PrepareArguments:
    output_dir: str = field(metadata={"help": "Folder for the WAV files and the jsonl splits."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out for evaluation."})
    seed: int = field(default=0, metadata={"help": "Seed of the hold-out split."})


def write_asterisk_rows(args: PrepareArguments) -> dict[str, int]:
    output = Path(args.output_dir)
    (output / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in asterisk_prompts():
        path = output / "audio" / f"{clip.name.replace('/', '__')}.wav"
        soundfile.write(path, clip.audio, clip.sampling_rate)
        rows.append({"text": clip.transcript, "audio": str(path.resolve()), "name": clip.name})
    random.Random(args.seed).shuffle(rows)
    num_eval = round(len(rows) * args.eval_fraction)
    splits = {"eval": rows[:num_eval], "train": rows[num_eval:]}
    for split, split_rows in splits.items():
        with open(output / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in split_rows)
    return {split: len(split_rows) for split, split_rows in splits.items()}


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(PrepareArguments).parse_args_into_dataclasses(args=argv)
    counts = write_asterisk_rows(args)
    print(f"Wrote {counts['train']} train and {counts['eval']} eval rows to {args.output_dir}")


if __name__ == "__main__":
    main()
