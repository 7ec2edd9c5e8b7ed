"""Build a SALAD checkpoint (model, processor, generation config, remote code, pipeline) from two checkpoints.

    python -m hub_scripts.build --audio_encoder openai/whisper-small --language_model Qwen/Qwen2.5-3B \
        --adapter_type transformer --output_dir salad-qwen2.5-3b-untrained

Hub ids work online; local paths and `embedded:<asset>` names work everywhere. The adapter is freshly
initialized (untrained). The options are those of `salad-train`'s model arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import TrlParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor
from trainers.distillation.config import SaladModelArguments
from trainers.distillation.train import load_model_and_processor


@dataclass
class BuildArguments(SaladModelArguments):
    output_dir: str = field(
        default="salad-untrained", metadata={"help": "Where to write the SALAD checkpoint."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the adapter's initialization."})


def build_salad_checkpoint(args: BuildArguments) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """Assemble the model and its processor and save both (with code and pipeline) to `args.output_dir`."""
    torch.manual_seed(args.seed)
    model, processor = load_model_and_processor(args)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model, processor


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((BuildArguments,)).parse_args_and_config(args=argv)
    model, _ = build_salad_checkpoint(args)
    adapter_params = sum(p.numel() for p in model.adapter.parameters())
    print(
        f"Saved SALAD checkpoint to {args.output_dir} (adapter: {adapter_params / 1e6:.1f}M parameters, untrained)"
    )


if __name__ == "__main__":
    main()
