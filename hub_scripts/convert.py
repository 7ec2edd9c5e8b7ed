"""Convert checkpoints that registries ship in other formats into transformers checkpoints.

    python -m hub_scripts.convert --format ctranslate2-whisper --source SRC_DIR --output_dir DST_DIR
    python -m hub_scripts.convert --format gguf --source MODEL.gguf --output_dir DST_DIR

`ctranslate2-whisper` reads a faster-whisper (CTranslate2) Whisper directory, `gguf` a GGUF causal LM (dequantized
to float32). salad's `embedded:` assets run the same converters on first use (`trainers.assets`); this is the
command line for other models of those formats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import TrlParser

from trainers.assets.ctranslate2_whisper import convert_ctranslate2_whisper
from trainers.assets.gguf_causal_lm import convert_gguf_causal_lm

CONVERTERS = {"ctranslate2-whisper": convert_ctranslate2_whisper, "gguf": convert_gguf_causal_lm}


@dataclass
class ConvertArguments:
    format: str = field(metadata={"help": f"The source checkpoint's format: one of {sorted(CONVERTERS)}."})
    source: str = field(metadata={"help": "A faster-whisper directory (with model.bin) or a .gguf file."})
    output_dir: str = field(metadata={"help": "Where to write the transformers checkpoint."})

    def __post_init__(self):
        if self.format not in CONVERTERS:
            raise ValueError(f"Unknown format {self.format!r}; choose one of {sorted(CONVERTERS)}.")


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ConvertArguments,)).parse_args_and_config(args=argv)
    logging.basicConfig(level=logging.INFO)
    print(CONVERTERS[args.format](args.source, args.output_dir))


if __name__ == "__main__":
    main()
