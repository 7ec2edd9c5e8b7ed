"""Build a SALAD checkpoint (model, processor, generation config, remote code, pipeline) from two checkpoints.

    python -m hub_scripts.build --audio_encoder openai/whisper-small --language_model Qwen/Qwen2.5-3B \
        --adapter_type transformer --output_dir salad-qwen2.5-3b-untrained

Hub ids work online; local paths work everywhere. The adapter is freshly initialized (untrained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from modeling_salad import SaladForConditionalGeneration, SaladProcessor


@dataclass
class BuildArguments:
    audio_encoder: str = field(
        metadata={"help": "Whisper, Mimi or wav2vec2-like checkpoint (Hub id or path)."}
    )
    language_model: str = field(metadata={"help": "Causal LM checkpoint with a tokenizer (Hub id or path)."})
    output_dir: str = field(metadata={"help": "Where to write the SALAD checkpoint."})
    adapter_type: str = field(default="mlp", metadata={"help": "'mlp' (stacking + SwiGLU) or 'transformer'."})
    adapter_stack_factor: int = field(default=4, metadata={"help": "Encoder frames per audio token."})
    adapter_intermediate_size: int = field(default=2048, metadata={"help": "Adapter MLP width."})
    adapter_hidden_size: int = field(default=960, metadata={"help": "Transformer adapter width."})
    adapter_num_layers: int = field(default=12, metadata={"help": "Transformer adapter layers."})
    adapter_num_attention_heads: int = field(default=15, metadata={"help": "Transformer adapter heads."})
    adapter_num_key_value_heads: int = field(default=5, metadata={"help": "Transformer adapter KV heads."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    seed: int = field(default=0, metadata={"help": "Seed of the adapter's initialization."})


def build_salad_checkpoint(args: BuildArguments) -> tuple[SaladForConditionalGeneration, SaladProcessor]:
    """Assemble the model and its processor and save both (with code and pipeline) to `args.output_dir`."""
    torch.manual_seed(args.seed)
    adapter_kwargs = {name: value for name, value in vars(args).items() if name.startswith("adapter_")}
    if args.adapter_type == "mlp":
        adapter_kwargs = {
            k: adapter_kwargs[k]
            for k in ("adapter_type", "adapter_stack_factor", "adapter_intermediate_size")
        }
    model = SaladForConditionalGeneration.from_pretrained_components(
        args.audio_encoder, args.language_model, dtype=getattr(torch, args.dtype), **adapter_kwargs
    )
    processor = SaladProcessor.from_pretrained_components(
        args.audio_encoder, args.language_model, model.config
    )
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model, processor


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(BuildArguments).parse_args_into_dataclasses(args=argv)
    model, _ = build_salad_checkpoint(args)
    adapter_params = sum(p.numel() for p in model.adapter.parameters())
    print(
        f"Saved SALAD checkpoint to {args.output_dir} (adapter: {adapter_params / 1e6:.1f}M parameters, untrained)"
    )


if __name__ == "__main__":
    main()
