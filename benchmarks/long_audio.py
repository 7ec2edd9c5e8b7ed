"""Do long clips keep their words? Transcripts of 60-180 s clips inside a `whisper_decoder` model, per window setting.

    python benchmarks/long_audio.py --model embedded:salad --seconds 60 120 180 --clips 2 \
        --windows 30:fixed 30:quiet 20:quiet 15:quiet 10:quiet --output benchmarks/results/long_audio.json

Each clip joins consecutive questions of the built-in task set, spoken by a voice training never used (flite `slt`),
with 0.4 s of silence between them, until it is at least `--seconds` long. For each window setting (`S:fixed`:
windows of S seconds cut at fixed times, the behaviour before issue 31; `S:quiet`: at most S seconds, each cut at the
quietest stretch of the window's second half) the model's own Whisper decoder transcribes every window as it does
inside the model, and the words that reach the LLM are scored against the clip's text (WER). Whisper's own long-form
transcription of the whole clip (`WhisperForConditionalGeneration.generate`, sequential 30 s windows that follow its
timestamps) is the reference. With `--repeat`, the model is also asked, in its chat template, to repeat each clip
with the model's own window setting (greedy), and that repeat is scored too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from modeling_salad import SaladProcessor
from trainers.assets import load_salad, resolve_checkpoint
from trainers.distillation.probes import ProbeRow, RepeatPrompt, greedy_repeats, word_error_rate
from trainers.tts import get_backend

SR = 16_000
TASKS = Path(__file__).resolve().parent.parent / "eval" / "data" / "offline_tasks.jsonl"


def long_clips(seconds: list[float], clips: int, voice: str) -> list[dict]:
    """`clips` clips of at least each length, from disjoint runs of consecutive spoken questions."""
    questions = iter(json.loads(line)["question"] for line in TASKS.read_text().splitlines())
    backend, pause = get_backend("flite"), np.zeros(int(0.4 * SR), dtype=np.float32)
    out = []
    for target in seconds:
        for _ in range(clips):
            texts, pieces = [], []
            while sum(piece.size for piece in pieces) < target * SR:
                texts.append(next(questions))
                pieces += [backend.synthesize(texts[-1], voice=voice).audio.astype(np.float32), pause]
            out.append({"seconds": target, "text": " ".join(texts), "audio": np.concatenate(pieces)})
    return out


@torch.no_grad()
def in_model_transcript(
    model, processor: SaladProcessor, tokenizer, audio: np.ndarray
) -> tuple[str, list[int]]:
    """The words Whisper's decoder writes inside the model, window by window (what reaches the LLM), and each
    window's token count."""
    inputs = processor(audio=audio, sampling_rate=SR)
    ids, _, counts = model.transcribe(inputs["input_features"], inputs["input_features_mask"])
    windows = [ids[w, : counts[w]].tolist() for w in range(len(counts))]
    return " ".join(tokenizer.decode(ids).strip() for ids in windows), counts.tolist()


@torch.no_grad()
def whisper_long_form(whisper, whisper_processor, audio: np.ndarray) -> str:
    features = whisper_processor.feature_extractor(
        audio, sampling_rate=SR, truncation=False, padding="longest", return_attention_mask=True,
        return_tensors="pt",
    )  # fmt: skip
    tokens = whisper.generate(
        features.input_features, attention_mask=features.attention_mask, return_timestamps=True
    )
    return whisper_processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()


def with_windows(processor: SaladProcessor, setting: str) -> SaladProcessor:
    seconds, _, cuts = setting.partition(":")
    spec = replace(processor.length_spec, chunk_samples=int(float(seconds) * SR), quiet_cuts=cuts == "quiet")
    return SaladProcessor(processor.feature_extractor, processor.tokenizer, audio_length_spec=spec.to_dict())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:salad")
    parser.add_argument("--asr_model", default="embedded:whisper-tiny.en")
    parser.add_argument("--seconds", type=float, nargs="+", default=[60, 120, 180])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--voice", default="slt")
    parser.add_argument(
        "--windows", nargs="+", default=["30:fixed", "30:quiet", "20:quiet", "15:quiet", "10:quiet"]
    )
    parser.add_argument(
        "--repeat", action="store_true", help="also the model's greedy chat repeat of each clip"
    )
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "long_audio.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, processor = load_salad(args.model)
    whisper_dir = resolve_checkpoint(args.asr_model)
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    whisper_processor = WhisperProcessor.from_pretrained(whisper_dir)
    clips = long_clips(args.seconds, args.clips, args.voice)
    rows = []
    for clip in clips:
        row = {
            "seconds": clip["seconds"],
            "audio_seconds": round(clip["audio"].size / SR, 1),
            "text": clip["text"],
        }
        row["whisper_long_form"] = whisper_long_form(whisper, whisper_processor, clip["audio"])
        row["in_model"] = {}
        for setting in args.windows:
            transcript, counts = in_model_transcript(
                model, with_windows(processor, setting), whisper_processor.tokenizer, clip["audio"]
            )
            row["in_model"][setting] = {"transcript": transcript, "tokens_per_window": counts}
        if args.repeat:
            prompt = RepeatPrompt(chat=True)
            row["repeat"] = greedy_repeats(
                model, processor, [ProbeRow(clip["text"], clip["audio"])], 1, prompt
            )[0]
        rows.append(row)
        print(f"{row['audio_seconds']} s done ({time.perf_counter() - start:.0f} s)", flush=True)
    table = {}
    for seconds in args.seconds:
        group = [row for row in rows if row["seconds"] == seconds]
        references = [row["text"] for row in group]
        table[str(seconds)] = {
            "whisper_long_form_wer": word_error_rate(references, [row["whisper_long_form"] for row in group]),
            **{
                f"in_model_wer[{setting}]": word_error_rate(
                    references, [row["in_model"][setting]["transcript"] for row in group]
                )
                for setting in args.windows
            },
        }
        if args.repeat:
            table[str(seconds)]["repeat_wer"] = word_error_rate(references, [row["repeat"] for row in group])
    report = {"command": " ".join(["python benchmarks/long_audio.py", *(argv or [])]), "wer": table, "clips": rows,
              "seconds": round(time.perf_counter() - start)}  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
