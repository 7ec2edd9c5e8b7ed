"""Rows that ask, inside the LLM's chat template, to repeat a clip, for distillation runs that mix them with others.

    python benchmarks/alignment/chat_repeat_rows.py --model runs/exp19-whisper-decoder-init \
        --rows data/tts/train.jsonl --num_rows 13500 --output data/chat_repeat/train.jsonl

Each row keeps its clip and transcript and gets its own `prompt` (the chat up to the clip) and `continuation` (the
rest of the user turn, then the transcript as the assistant's reply and its end of turn), which `trainers.data`
reads as a row's own frame. The teacher reads the transcript in place of the clip, so the forward KL on the reply
is the chat "repeat" task of the probes (`trainers.probes.RepeatPrompt(chat=True)`), and such rows can be mixed
with interleaved rows, which a `chat_format` run cannot. A row without a `duration` (the recorded Asterisk prompts)
gets its clip's length in seconds, which grouping by length sorts by.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import soundfile

from modeling_salad import SaladProcessor
from trainers.assets import resolve_checkpoint
from trainers.probes import RepeatPrompt


def chat_repeat_frame(processor: SaladProcessor, transcript: str) -> tuple[str, str]:
    """`(prompt, continuation)` around the clip: the rendered chat prompt split at its audio token, with the
    transcript and the template's end of turn after it."""
    rendered = RepeatPrompt(chat=True).text(processor)
    before, after = rendered.split(processor.audio_token)
    finished = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": transcript}], tokenize=False
    )
    reply = finished[finished.rindex(transcript) :]
    return before, after + reply


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="The SALAD checkpoint whose processor renders the chat."
    )
    parser.add_argument(
        "--rows", required=True, help="jsonl rows with `text` and `audio` (trainers.data schema)."
    )
    parser.add_argument("--num_rows", type=int, default=None, help="Use the first N rows (default: all).")
    parser.add_argument("--output", required=True, help="Write the rows here (jsonl).")
    args = parser.parse_args(argv)
    processor = SaladProcessor.from_pretrained(resolve_checkpoint(args.model))
    lines = Path(args.rows).read_text().splitlines()[: args.num_rows]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as handle:
        for line in lines:
            row = json.loads(line)
            row["prompt"], row["continuation"] = chat_repeat_frame(processor, row["text"].strip())
            row.setdefault("duration", round(soundfile.info(row["audio"]).duration, 4))
            handle.write(json.dumps(row) + "\n")
    print(f"Wrote {len(lines)} chat repeat rows to {output}")


if __name__ == "__main__":
    main()
