"""What one step of Whisper's search inside the shipped model costs, part by part, and how much of it is reading
weights from memory: the floor under the `whisper_decoder` adapter's time to first token on this machine.

    python benchmarks/decoder_step.py        # alone on the machine; writes benchmarks/results/decoder_step.json

Each step of the search runs Whisper's decoder on one new token per beam (its cache holding the prompt, the tokens
so far and the cross-attention keys and values over the window's frames), projects the beams' states onto Whisper's
51,865-token vocabulary (`vocabulary_logits`), and picks the next beams (log-softmax and top-k). Each part is timed
here for 1, 2 and 5 rows (greedy, and the shipped 5 beams) on a window of the built-in questions' median length
(2.6 s of speech, read with the shipped 4-8 s of silence after it), in fp32 as the model runs it. Where a part's time
hardly grows with its rows, it is bound by reading its weights, not by arithmetic: the decoder's linear layers are
also timed alone in fp32 and as bf16 copies (half the bytes), and the JSON gives the bytes each part reads a step.
Four levers of issue 34 are timed on the whole step too: transformers' eager attention in place of SDPA, the
decoder loaded in bf16, `torch.compile` of the decoder on the dynamic cache the search uses, and a static cache
(preallocated to Whisper's 448 positions, as transformers compiles generation) without and with `torch.compile`.
A compiled variant's compilation happens in its warm-up calls, which are not timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from functools import partial
from pathlib import Path

import torch
from latency import machine
from torch import nn
from transformers.cache_utils import EncoderDecoderCache, StaticCache

from modeling_salad.adapters_salad import vocabulary_logits
from trainers.assets import load_salad

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decoder_step.json"
ROWS = (1, 2, 5)
MEDIAN_QUESTION_SECONDS = 2.6


def milliseconds(step, repeats: int) -> float:
    """Median wall time of `step()` in ms over `repeats` calls, after 3 that warm up."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def encoder_positions(model, seconds: float) -> int:
    """Whisper encoder positions of a window of `seconds` of speech, padded as the shipped model reads it."""
    frames_per_second = model.config.audio_sampling_rate / model.config.audio_length_spec.feature_hop
    lengths = torch.tensor([round(seconds * frames_per_second)])
    frames = model.whisper_input_frames(lengths, model.config.adapter_decoder_pad_seconds)
    return int(frames[0]) // 2  # Whisper's second convolution has stride 2


def step_inputs(
    decoder, prompt_ids: list[int], rows: int, positions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a step of `rows` beams reads besides its cache, in the decoder's dtype: the window's encoder states
    (random: only their shape matters to the time), the prompt and 8 transcript tokens that fill the cache first,
    and each beam's new token."""
    dtype = decoder.embed_tokens.weight.dtype
    encoder_states = torch.randn(rows, positions, decoder.config.d_model, dtype=dtype)
    prompt = torch.tensor(prompt_ids + [440] * 8).expand(rows, -1)
    return encoder_states, prompt, torch.full((rows, 1), 440)


def decoder_step_ms(decoder, prompt_ids: list[int], rows: int, positions: int, repeats: int) -> float:
    """One cached decoder step for `rows` beams, 8 tokens into the transcript, in the decoder's dtype."""
    encoder_states, prompt, next_ids = step_inputs(decoder, prompt_ids, rows, positions)
    cache = decoder(input_ids=prompt, encoder_hidden_states=encoder_states, use_cache=True).cache

    def step():
        decoder(input_ids=next_ids, encoder_hidden_states=encoder_states, cache=cache, use_cache=True)
        cache.self_attention_cache.crop(-1)  # every call sees the same cache length

    return milliseconds(step, repeats)


def static_decoder_step_ms(decoder, prompt_ids: list[int], rows: int, positions: int, repeats: int) -> float:
    """`decoder_step_ms` with a static cache: the self-attention's preallocated to Whisper's positions, the
    cross-attention's to the window's frames. Every call writes the same position, so it sees the same cache."""
    config = copy.deepcopy(decoder.config)
    config.num_hidden_layers = config.decoder_layers
    cache = EncoderDecoderCache(
        StaticCache(config=config, max_cache_len=config.max_target_positions),
        StaticCache(config=config, max_cache_len=positions),
    )
    encoder_states, prompt, next_ids = step_inputs(decoder, prompt_ids, rows, positions)
    decoder(input_ids=prompt, encoder_hidden_states=encoder_states, cache=cache, use_cache=True)
    position = torch.full((rows, 1), prompt.shape[1])

    def step():
        decoder(
            input_ids=next_ids, encoder_hidden_states=encoder_states, cache=cache, use_cache=True,
            position_ids=position,
        )  # fmt: skip

    return milliseconds(step, repeats)


def step_linear_layers(decoder) -> list[nn.Linear]:
    """The decoder's linear layers that every step runs: all but the cross-attention's key and value projections
    (computed once, over the frames, with the prompt)."""
    return [
        module
        for name, module in decoder.named_modules()
        if isinstance(module, nn.Linear) and not name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))
    ]


def linear_layers_ms(decoder, rows: int, dtype: torch.dtype, repeats: int) -> float:
    """The linear layers of a step alone, once each on `rows` rows, with weights in `dtype`."""
    layers = [
        (module.weight.to(dtype), None if module.bias is None else module.bias.to(dtype))
        for module in step_linear_layers(decoder)
    ]
    inputs = {
        width: torch.randn(rows, width, dtype=dtype) for width in {weight.shape[1] for weight, _ in layers}
    }

    def step():
        for weight, bias in layers:
            nn.functional.linear(inputs[weight.shape[1]], weight, bias)

    return milliseconds(step, repeats)


def decoder_variants(decoder) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """The decoder as shipped and as the levers would run it whole, by the name of their results: on the dynamic
    cache the search uses, transformers' eager attention in place of SDPA, every weight in bf16 (attention and layer
    norms included, as `dtype=torch.bfloat16` loads it) and `torch.compile` with shapes marked dynamic (the cache
    grows every step); on a static cache, the decoder as shipped and compiled. The copy shares one copied config
    among its layers, so setting its attention there switches every layer."""
    eager = copy.deepcopy(decoder)
    eager.config._attn_implementation = "eager"
    dynamic_cache = {"decoder_step": decoder, "decoder_step_eager_attention": eager,
                     "decoder_step_bf16": copy.deepcopy(decoder).to(torch.bfloat16),
                     "decoder_step_compiled": torch.compile(copy.deepcopy(decoder), dynamic=True)}  # fmt: skip
    static_cache = {
        "decoder_step_static_cache": decoder,
        "decoder_step_static_cache_compiled": torch.compile(copy.deepcopy(decoder)),
    }
    return dynamic_cache, static_cache


def step_parts_ms(
    variants: tuple[dict[str, nn.Module], dict[str, nn.Module]],
    prompt_ids: list[int],
    rows: int,
    positions: int,
    repeats: int,
) -> dict[str, float]:
    """Each part of a search step for `rows` beams, in ms (`variants`: `decoder_variants`)."""
    dynamic_cache, static_cache = variants
    decoder = dynamic_cache["decoder_step"]
    head = decoder.embed_tokens.weight
    states = torch.randn(rows, decoder.config.d_model)
    logits = vocabulary_logits(states, head)
    return {
        **{
            name: decoder_step_ms(variant, prompt_ids, rows, positions, repeats)
            for name, variant in dynamic_cache.items()
        },
        **{
            name: static_decoder_step_ms(variant, prompt_ids, rows, positions, repeats)
            for name, variant in static_cache.items()
        },
        "decoder_linear_layers_fp32": linear_layers_ms(decoder, rows, torch.float32, repeats),
        "decoder_linear_layers_bf16_weights": linear_layers_ms(decoder, rows, torch.bfloat16, repeats),
        "vocabulary_logits": milliseconds(partial(vocabulary_logits, states, head), repeats),
        "log_softmax_and_top_k": milliseconds(partial(pick_beams, logits, rows), repeats),
    }


def pick_beams(logits: torch.Tensor, rows: int) -> torch.Tensor:
    """A step's choice of continuations: the `2 * rows` best of all rows' log-probabilities."""
    return logits.log_softmax(-1).flatten().topk(2 * rows).indices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="embedded:salad", help="The SALAD checkpoint whose Whisper to time."
    )
    parser.add_argument(
        "--repeats", type=int, default=200, help="Timed calls per measurement (the median is kept)."
    )
    parser.add_argument("--output", default=str(RESULTS), help="Where the JSON results go.")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    # the compiled variants share transformers' forward wrapper, whose graphs (prompt and step, per row count) count
    # against one limit, past which dynamo would time the uncompiled forward
    torch._dynamo.config.recompile_limit = 64
    model, _ = load_salad(args.model, torch.float32)
    adapter = model.adapter
    decoder = adapter.decoder
    head = decoder.embed_tokens.weight
    variants = decoder_variants(decoder)
    positions = encoder_positions(model, MEDIAN_QUESTION_SECONDS)
    linear_bytes = sum(module.weight.numel() * 4 for module in step_linear_layers(decoder))
    results = {
        "command": "python benchmarks/decoder_step.py",
        "model": args.model,
        "machine": machine(),
        "encoder_positions": positions,
        "bytes_read_per_step_mb": {
            "decoder_linear_weights_fp32": linear_bytes / 2**20,
            "cross_attention_keys_values_per_row": decoder.config.decoder_layers * 2 * positions
            * decoder.config.d_model * 4 / 2**20,
            "vocabulary_head_fp32": head.numel() * 4 / 2**20,
        },
        "ms": {},
    }  # fmt: skip
    for rows in ROWS:
        results["ms"][str(rows)] = step_parts_ms(variants, adapter.prompt_ids, rows, positions, args.repeats)
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
