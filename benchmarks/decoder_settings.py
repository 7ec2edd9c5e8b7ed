"""The `whisper_decoder` adapter's decoding settings as command-line levers of the benchmarks (`latency.py`,
`cascade_gap.py`): the checkpoint's own unless given, so that one lever at a time can be timed and scored."""

from __future__ import annotations

import argparse


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decoder_num_beams",
        type=int,
        default=None,
        help="Whisper's search inside the model, in beams (1: greedy); default: the checkpoint's "
        "`adapter_decoder_num_beams`. A cascade's ASR pipeline keeps its own default (5).",
    )
    parser.add_argument(
        "--decoder_pad_seconds",
        type=pad_seconds,
        default=None,
        help="Seconds of silence Whisper reads after each window, or `full` (padded to 30 s, as a cascade's ASR "
        "pipeline reads a clip); default: the checkpoint's `adapter_decoder_pad_seconds`.",
    )


def pad_seconds(value: str) -> str:
    """`full`, or a positive number of seconds (checked here, before a worker process loads the model)."""
    if value != "full":
        try:
            seconds = float(value)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:
            raise argparse.ArgumentTypeError(
                f"expected `full` or a positive number of seconds, got {value!r}"
            )
    return value


def decoder_overrides(args: argparse.Namespace) -> dict:
    """The config settings to load the model with (`load_salad(..., **overrides)`): only those given."""
    overrides = {}
    if args.decoder_num_beams is not None:
        overrides["adapter_decoder_num_beams"] = args.decoder_num_beams
    if args.decoder_pad_seconds is not None:
        full = args.decoder_pad_seconds == "full"
        overrides["adapter_decoder_pad_seconds"] = None if full else float(args.decoder_pad_seconds)
    return overrides


def decoder_arguments(args: argparse.Namespace) -> list[str]:
    """The given settings as command-line arguments again (for a worker process)."""
    return [
        item
        for name in ("decoder_num_beams", "decoder_pad_seconds")
        if getattr(args, name) is not None
        for item in (f"--{name}", str(getattr(args, name)))
    ]
