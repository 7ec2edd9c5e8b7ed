"""Convert a GGUF causal language model into a dequantized transformers checkpoint (safetensors).

transformers can load a GGUF file (`from_pretrained(dir, gguf_file=...)`, which dequantizes every tensor), but
the loaded model keeps a `quantization_config` and cannot be saved as it is. This module loads the GGUF file in
float32, rebuilds the same architecture from its config without the quantization settings, copies the
dequantized state dict into it and saves a plain checkpoint together with the tokenizer and generation config
read from the GGUF metadata. Loading the result skips the slow GGUF dequantization on every start.

Usage:
    python -m hub_scripts.convert gguf MODEL.gguf DST_DIR
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

logger = logging.getLogger(__name__)


def load_gguf_causal_lm(gguf_path: str | Path) -> PreTrainedModel:
    """Load and dequantize a GGUF causal LM into float32 with transformers' own GGUF reader."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} not found")
    return AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )


def dequantized_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain float32 model of the same architecture and weights, free of the GGUF quantization config."""
    config = model.config.__class__.from_dict(
        {key: value for key, value in model.config.to_dict().items() if key != "quantization_config"}
    )
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.eval()


def convert_gguf_causal_lm(gguf_path: str | Path, output_dir: str | Path) -> Path:
    """Write a safetensors transformers checkpoint (model, tokenizer, generation config) of a GGUF causal LM.

    Returns `output_dir` as a `Path`; `AutoModelForCausalLM.from_pretrained(output_dir)` then gives the same
    logits as loading the GGUF file with `dtype=torch.float32`.
    """
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    model = dequantized_copy(load_gguf_causal_lm(gguf_path))
    model.save_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(output_dir)
    return output_dir
