"""How much silence Whisper must read after a window to transcribe it (issue 34's first lever): Whisper inside the
shipped model reads each window padded to 30 s, as its ASR pipeline does, and its encoder's time grows with that
padding. With `adapter_decoder_pad_seconds` it reads the window plus a few seconds instead. For each setting, on
the built-in questions spoken by a held-out voice:

- transcripts identical to the 30 s ones;
- windows whose short read failed to stop (with too little silence after the words Whisper writes the sentence
  again, or runs on to the window's audio-token slots), which the model then reads again over 30 s
  (`transcribe_windows`), and windows whose final transcript still ran to their slots;
- word error rate against the text that was spoken (`trainers.distillation.probes.word_error_rate`);
- seconds per clip of the encoder and the decoder's search (median).

    python benchmarks/whisper_padding.py --voice en-us --pad_seconds 4 6 8   # alone on the machine
    python benchmarks/whisper_padding.py --voice slt --pad_seconds 4 6 8
    python benchmarks/whisper_padding.py --voice en-us --pad_seconds --reference OLD.json --output NEW.json

Results: `benchmarks/results/whisper_padding-VOICE.json` (with every transcript). Accuracy on the questions is
`cascade_gap.py ablate --decoder_pad_seconds S`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from eval.scoring import text_prompt
from eval.speech import HELD_OUT_VOICES, synthesize_items
from eval.tasks import load_offline_tasks
from trainers.assets import load_salad
from trainers.distillation.probes import word_error_rate

RESULTS = Path(__file__).resolve().parent / "results"


def transcribe_all(model, processor, clips: list[np.ndarray]) -> dict:
    """Each clip's transcript inside the model (`transcribe_windows`: with a short read, read again over 30 s where
    Whisper failed to stop), whether it ran to its slots, the seconds it took, and whether the short read failed
    to stop (so was read again; always False at 30 s)."""
    texts, cut, seconds, retried = [], [], [], []
    for clip in clips:
        inputs = processor(text=text_prompt(processor.audio_token, ""), audio=clip, sampling_rate=16000)
        features, mask = inputs["input_features"], inputs["input_features_mask"]
        start = time.perf_counter()
        windows = model.encode_windows(features, mask)
        transcript = model.transcribe_windows(windows)
        seconds.append(time.perf_counter() - start)
        texts.append(" ".join(model.adapter.transcript_texts(transcript)))
        cut.append(bool((transcript.counts >= windows.token_mask.sum(-1)).any()))
        failed = model.adapter.failed_to_stop(model.adapter.search(windows), windows) & model.read_short(
            windows
        )
        retried.append(bool(failed.any()))
    return {"texts": texts, "cut": cut, "seconds": seconds, "read_again_over_30_s": retried}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--voice", choices=list(HELD_OUT_VOICES), default="en-us")
    parser.add_argument("--pad_seconds", type=float, nargs="*", default=[4.0, 6.0, 8.0])
    parser.add_argument(
        "--reference",
        help="An earlier results file of this script: how many 30 s transcripts are the same as its (a change to the "
        "decoder's search that should change no token is checked so).",
    )
    parser.add_argument("--output", help="Results file (default: results/whisper_padding-VOICE.json).")
    parser.add_argument("--limit", type=int, default=None, help="Questions (default: all 338).")
    parser.add_argument("--model", default="embedded:salad")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    items = load_offline_tasks()[: args.limit]
    backend, voice = HELD_OUT_VOICES[args.voice]
    clips = synthesize_items(items, 16000, backend=backend, voice=voice)
    spoken = [item.spoken_text for item in items]
    runs = {}
    for pad in [None, *args.pad_seconds]:
        model, processor = load_salad(args.model, torch.float32, adapter_decoder_pad_seconds=pad)
        runs["full" if pad is None else f"{pad:g}"] = transcribe_all(model, processor, clips)
    full = runs["full"]["texts"]
    summary = {
        label: {
            "identical_to_full": sum(a == b for a, b in zip(run["texts"], full)),
            "cut_at_slots": sum(run["cut"]),
            "read_again_over_30_s": sum(run["read_again_over_30_s"]),
            "wer": word_error_rate(spoken, run["texts"]),
            "seconds_per_clip_median": float(np.median(run["seconds"])),
        }
        for label, run in runs.items()
    }
    if args.reference:
        earlier = json.loads(Path(args.reference).read_text())["runs"]["full"]["texts"]
        if len(earlier) != len(full):
            raise ValueError(f"{args.reference} holds {len(earlier)} transcripts, this run {len(full)}.")
        summary["full"]["identical_to_reference"] = sum(a == b for a, b in zip(full, earlier))
    results = {
        "model": args.model,
        "voice": args.voice,
        "items": len(items),
        "summary": summary,
        "runs": runs,
    }
    output = Path(args.output) if args.output else RESULTS / f"whisper_padding-{args.voice}.json"
    output.write_text(json.dumps(results, indent=1) + "\n")
    if args.reference:
        print(
            f"30 s transcripts identical to {args.reference}: {summary['full']['identical_to_reference']}/{len(items)}"
        )
    for label, row in summary.items():
        print(f"{label}: identical {row['identical_to_full']}/{len(items)}, cut {row['cut_at_slots']}, "
              f"read again over 30 s {row['read_again_over_30_s']}, "
              f"WER {100 * row['wer']:.1f}%, {row['seconds_per_clip_median']:.3f} s a clip")  # fmt: skip
    print(f"-> {output}")


if __name__ == "__main__":
    main()
