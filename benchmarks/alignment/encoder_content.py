"""Does SALAD's trimmed Whisper input keep the words? Whisper's own decoder reads both encoder outputs.

    python benchmarks/alignment/encoder_content.py --encoder embedded:whisper-base --rows data/tts/eval.jsonl \
        --output benchmarks/alignment/exp15-asr-chat-whisper-base/encoder_content-whisper-base.json

SALAD runs the Whisper encoder on the clip's real length (`SaladForConditionalGeneration._encode_whisper`:
positions sliced, no 30 s of padding), which Whisper never saw in training. Whisper's own decoder, teacher-forced
on each clip's transcript, gives the transcript's NLL and token accuracy from the encoder's output of the padded
30 s window and from SALAD's trimmed input. If the trimmed numbers are close, the adapter is fed what the encoder
knows; across encoders, they say which one's features hold more of the words. Teacher forcing, not greedy
decoding: on trimmed input Whisper's decoder reads the words but often misses the end of the text (it repeats
the last word, or stops after one), which would make a WER measure its stopping, not the content.

A gap between the two can come from either side: the encoder's features of a trimmed clip may hold less, or the
decoder, trained on 1,500 encoder frames, may read a shorter sequence worse. `--windows` separates them: the clip
padded with silence to each window (as Whisper was trained, the encoder attending to the padding), encoded, and
sliced back to the clip's own frames, the sequence an adapter would receive if SALAD padded. If the sliced 30 s
encoding reads as well as the full one, trimming costs the features; if it reads as badly as the trimmed one, the
cost is the decoder's and the adapter loses nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.modeling_outputs import BaseModelOutput

from modeling_salad import SaladForConditionalGeneration
from trainers.assets import resolve_checkpoint
from trainers.distillation.probes import load_probe_rows


def whisper_transcript_scores(whisper, labels: torch.Tensor, num_prefix: int, encoder_states: torch.Tensor):
    """Summed NLL, correct top-1 count and count of the transcript's tokens (after the task prefix, before the end
    of text), Whisper's decoder teacher-forced on `labels` while reading `encoder_states`."""
    logits = whisper(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states), decoder_input_ids=labels[:, :-1]
    ).logits[0]
    targets = labels[0, 1:]
    scored = slice(num_prefix - 1, targets.shape[0] - 1)  # predictions of the text tokens only
    log_probs = torch.log_softmax(logits[scored].float(), -1)
    nll = -log_probs.gather(-1, targets[scored, None]).sum().item()
    correct = (log_probs.argmax(-1) == targets[scored]).sum().item()
    return nll, correct, targets[scored].shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="embedded:whisper-tiny.en", help="A Whisper checkpoint.")
    parser.add_argument(
        "--llm", default="embedded:smollm2-135m-instruct", help="Any LLM (only the encoder runs)."
    )
    parser.add_argument(
        "--rows", required=True, help="Held-out rows (jsonl, `trainers.distillation.data` schema)."
    )
    parser.add_argument("--num_rows", type=int, default=55, help="Rows, spread evenly over the file.")
    parser.add_argument("--output", required=True, help="Write the results here as JSON.")
    parser.add_argument(
        "--windows",
        type=float,
        nargs="*",
        default=[],
        help="Seconds to pad each clip to before encoding, then slice to its frames (a clip longer than a "
        "window is encoded at its own length).",
    )
    args = parser.parse_args(argv)

    checkpoint = resolve_checkpoint(args.encoder)
    whisper = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = WhisperProcessor.from_pretrained(checkpoint)
    salad = SaladForConditionalGeneration.from_pretrained_components(
        checkpoint, resolve_checkpoint(args.llm)
    ).eval()
    rows = load_probe_rows(args.rows, args.num_rows, processor.feature_extractor.sampling_rate)
    if whisper.generation_config.is_multilingual:
        processor.tokenizer.set_prefix_tokens(language="en", task="transcribe")
    num_prefix = len(processor.tokenizer.prefix_tokens)
    extract = processor.feature_extractor
    names = ["padded_30s", "trimmed_salad"] + [f"padded_{window:g}s_sliced" for window in args.windows]
    totals = {name: [0.0, 0, 0] for name in names}
    with torch.no_grad():
        for row in rows:
            labels = processor.tokenizer(" " + row.text, return_tensors="pt").input_ids
            full = extract(row.audio, sampling_rate=extract.sampling_rate, return_tensors="pt").input_features
            short = extract(
                row.audio, sampling_rate=extract.sampling_rate, padding="longest", return_tensors="pt"
            ).input_features
            trimmed = salad._encode_whisper(short, torch.tensor([short.shape[-1]]))
            states = {"padded_30s": whisper.model.encoder(full).last_hidden_state, "trimmed_salad": trimmed}
            for window, name in zip(args.windows, names[2:]):
                samples = max(int(window * extract.sampling_rate), len(row.audio))
                padded = extract(
                    row.audio,
                    sampling_rate=extract.sampling_rate,
                    padding="max_length",
                    max_length=samples,
                    return_tensors="pt",
                ).input_features
                encoded = salad._encode_whisper(padded, torch.tensor([padded.shape[-1]]))
                states[name] = encoded[:, : trimmed.shape[1]]
            for name, encoded in states.items():
                scores = whisper_transcript_scores(whisper, labels, num_prefix, encoded)
                totals[name] = [total + score for total, score in zip(totals[name], scores)]
    results = {"encoder": args.encoder, "rows": args.rows, "num_rows": len(rows)}
    for name, (nll, correct, count) in totals.items():
        results[name] = {"transcript_nll": nll / count, "token_accuracy": correct / count, "tokens": count}
    print(results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
