"""Time to first token, generation speed and peak memory of a SALAD model and of the cascade made of its parts
(Whisper tiny.en's transcript read by SmolLM2), on the same spoken questions, each system in its own process; and
where SALAD's first token spends its time.

    python benchmarks/latency.py                                   # 20 built-in questions, fp32
    python benchmarks/latency.py --questions 40 --dtype bfloat16 --output benchmarks/results/latency_bf16.json
    python benchmarks/latency.py --decoder_num_beams 1 --output benchmarks/results/latency_greedy.json

Each question of the built-in set is spoken by the held-out espeak-ng `en-us` voice and asked in the harness's
frame (`Question: <clip>\nAnswer:`). A system gets the audio as an array and answers greedily with
`--new_tokens` tokens; a streamer stamps each token as it comes, so one call gives both:

- time to first token (TTFT): from the array to the first answer token, the processor and (for the cascade) the
  ASR included;
- tokens per second after the first.

The first question only warms up (it is not counted). Peak memory is the process's own peak RSS (`VmHWM`).
SALAD's TTFT is then split by hooks into the processor (features), the speech encoder, Whisper's search for the
`whisper_decoder` adapter's transcript (`transcribe_windows`: the decoder's steps, counted apart too, the vocabulary
logits and the search's bookkeeping, and a window's 30 s re-read where a short read failed to stop), the adapter's
embeddings, and the LLM's prefill; the cascade's into its ASR and its LLM. Results go to `benchmarks/results/latency.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from decoder_settings import add_decoder_arguments, decoder_arguments, decoder_overrides

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"
SYSTEMS = ("salad", "cascade")


class Stopwatch:
    """Seconds spent inside each watched step (summed over calls) and the number of calls: a module's forward
    (`watch`), or a method that is not one module's forward (`watch_method`)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._started: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - self._started.pop(name)
        self.calls[name] = self.calls.get(name, 0) + 1

    def watch(self, name: str, module) -> None:
        module.register_forward_pre_hook(lambda *_: self.start(name))
        module.register_forward_hook(lambda *_: self.stop(name))

    def watch_method(self, name: str, owner, method: str) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            self.start(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.stop(name)

        setattr(owner, method, timed)

    def reset(self) -> None:
        self.seconds, self.calls = {}, {}


class TokenClock:
    """A `generate` streamer that stamps every new token (the first `put` is the prompt) and calls `on_first_token`
    when the first one comes, before any decode step runs."""

    def __init__(self, on_first_token=None):
        self.stamps: list[float] = []
        self._prompt_seen = False
        self._on_first_token = on_first_token

    def put(self, value) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
            if len(self.stamps) == 1 and self._on_first_token is not None:
                self._on_first_token()
        self._prompt_seen = True

    def end(self) -> None:
        pass


def questions(count: int) -> list[np.ndarray]:
    from eval.speech import synthesize_items
    from eval.tasks import load_task

    return synthesize_items(load_task("offline", count), 16000, voice="en-us")


def run_salad(
    clips: list[np.ndarray], model_name: str, dtype, new_tokens: int, overrides: dict
) -> list[dict]:
    import torch

    from eval.scoring import text_prompt
    from trainers.assets import load_salad

    model, processor = load_salad(model_name, dtype, **overrides)
    watch = Stopwatch()
    # the encoder: the features padded as it reads them, then its layers (which a short window runs without the
    # encoder module's own forward)
    watch.watch_method("encoder", model, "encode_windows")
    parts = {"adapter": model.adapter, "llm": model.language_model}
    if model.adapter.writes_text:  # Whisper's search, its decoder's calls among it
        watch.watch_method("whisper_search", model, "transcribe_windows")
        parts["whisper_decoder"] = model.adapter.decoder
    for name, module in parts.items():
        watch.watch(name, module)
    measured = []
    for clip in clips:
        watch.reset()
        prefill: dict = {}

        def at_first_token(prefill=prefill):
            prefill.update(seconds=dict(watch.seconds), calls=dict(watch.calls))

        clock = TokenClock(on_first_token=at_first_token)
        start = time.perf_counter()
        inputs = processor(text=text_prompt(processor.audio_token, ""), audio=clip, sampling_rate=16000)
        features = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           streamer=clock)  # fmt: skip
        first = clock.stamps[0]
        measured.append({
            "ttft": first - start,
            "tokens_per_second": (len(clock.stamps) - 1) / (clock.stamps[-1] - first),
            "processor": features - start,
            "prefill_seconds": prefill["seconds"],  # sums up to the first token (Whisper's search includes its
            "prefill_calls": prefill["calls"],  # decoder's calls, and the encoder's 30 s re-reads where it retries)
            "seconds_of_audio": clip.size / 16000,
        })  # fmt: skip
    return measured


def run_cascade(clips: list[np.ndarray], dtype, new_tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from eval.scoring import text_prompt
    from eval.speech import english_generate_kwargs
    from trainers.assets import resolve_checkpoint

    asr = pipeline(
        "automatic-speech-recognition", model=resolve_checkpoint("embedded:whisper-tiny.en"), dtype=dtype
    )
    asr_kwargs = english_generate_kwargs(asr.model.generation_config)
    llm_path = resolve_checkpoint("embedded:smollm2-135m-instruct")
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    measured = []
    for clip in clips:
        clock = TokenClock()
        start = time.perf_counter()
        text = asr({"raw": clip, "sampling_rate": 16000}, generate_kwargs=asr_kwargs)["text"].strip()
        heard = time.perf_counter()
        inputs = tokenizer(text_prompt(text, ""), return_tensors="pt")
        with torch.no_grad():
            llm.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         streamer=clock, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        first = clock.stamps[0]
        measured.append({
            "ttft": first - start,
            "tokens_per_second": (len(clock.stamps) - 1) / (clock.stamps[-1] - first),
            "asr": heard - start,
            "llm_to_first_token": first - heard,
            "seconds_of_audio": clip.size / 16000,
        })  # fmt: skip
    return measured


def worker(args: argparse.Namespace) -> None:
    """One system in this process; prints its measurements as one JSON line."""
    import torch

    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype)
    clips = questions(args.questions + 1)
    if args.worker == "salad":
        measured = run_salad(clips, args.model, dtype, args.new_tokens, decoder_overrides(args))
    else:
        measured = run_cascade(clips, dtype, args.new_tokens)
    # VmHWM: this process's own peak resident memory (ru_maxrss would carry the parent's peak across fork + exec)
    status = Path("/proc/self/status").read_text().splitlines()
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"questions": measured[1:], "peak_rss_mb": peak_kb / 1024}))  # the first one warms up


def summary(measured: dict) -> dict:
    """Median and p90 of TTFT, median tokens per second, and the median of every part of the first token."""
    rows = measured["questions"]
    ttft = [row["ttft"] for row in rows]
    result = {
        "ttft_median_seconds": float(np.median(ttft)),
        "ttft_p90_seconds": float(np.percentile(ttft, 90)),
        "tokens_per_second_median": float(np.median([row["tokens_per_second"] for row in rows])),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "questions": len(rows),
        "audio_seconds_median": float(np.median([row["seconds_of_audio"] for row in rows])),
    }
    parts = {
        key for row in rows for key in row if key not in ("ttft", "tokens_per_second", "seconds_of_audio")
    }
    breakdown = {}
    for part in sorted(parts):
        values = [row[part] for row in rows]
        if isinstance(values[0], dict):  # per module (seconds) or calls: the median of each
            for name in sorted(values[0]):
                breakdown[f"{part}.{name}"] = float(np.median([value.get(name, 0) for value in values]))
        else:
            breakdown[part] = float(np.median(values))
    result["first_token_breakdown_median"] = breakdown
    return result


def machine() -> dict:
    import platform

    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "?")
    return {
        "cpu": model,
        "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--questions", type=int, default=20, help="Timed questions per system (after one warm-up)."
    )
    parser.add_argument("--new_tokens", type=int, default=16, help="Tokens generated per answer.")
    parser.add_argument("--model", default="embedded:salad", help="The SALAD checkpoint to time.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_decoder_arguments(parser)
    parser.add_argument("--output", default=str(RESULTS), help="Where the JSON results go.")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    results = {"command": "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": args.model, "dtype": args.dtype, "new_tokens": args.new_tokens,
               "decoder_settings": decoder_overrides(args), "machine": machine(),
               "systems": {}}  # fmt: skip
    for system in SYSTEMS:
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", system, "--questions", str(args.questions), "--model",
             args.model, "--dtype", args.dtype, "--new_tokens", str(args.new_tokens),
             *decoder_arguments(args)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        results["systems"][system] = summary(json.loads(completed.stdout.strip().splitlines()[-1]))
    salad, cascade = results["systems"]["salad"], results["systems"]["cascade"]
    results["ttft_ratio_salad_to_cascade"] = salad["ttft_median_seconds"] / cascade["ttft_median_seconds"]
    Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    for system, value in results["systems"].items():
        print(f"{system}: TTFT median {value['ttft_median_seconds']:.3f} s (p90 {value['ttft_p90_seconds']:.3f}), "
              f"{value['tokens_per_second_median']:.1f} tokens/s, peak RSS {value['peak_rss_mb']:.0f} MB")  # fmt: skip
        for part, seconds in value["first_token_breakdown_median"].items():
            print(f"    {part}: {seconds:.3f}")
    print(f"SALAD / cascade TTFT: {results['ttft_ratio_salad_to_cascade']:.2f}x -> {args.output}")


if __name__ == "__main__":
    main()
