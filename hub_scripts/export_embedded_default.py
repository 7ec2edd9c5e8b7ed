"""Ship a trained adapter as the embedded default (what `embedded:salad` and `make demo` load).

    python -m hub_scripts.export_embedded_default --checkpoint runs/embedded-default-asr-chat   # -> the folder in git

Only the adapter (and the audio token's embedding row) is kept; a checkpoint whose encoder or LLM changed is
refused, because those weights would be lost (`trainers.assets.embedded_default.export_embedded_default`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import TrlParser

from trainers.assets.embedded_default import export_embedded_default


@dataclass
class ExportArguments:
    checkpoint: str = field(metadata={"help": "SALAD checkpoint trained on the embedded components."})
    destination: str | None = field(
        default=None,
        metadata={"help": "Default: trainers/assets/embedded-default/, the shipped adapter's folder in git."},
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ExportArguments,)).parse_args_and_config(args=argv)
    print(f"Wrote {export_embedded_default(args.checkpoint, args.destination)}")


if __name__ == "__main__":
    main()
