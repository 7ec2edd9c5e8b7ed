"""Peak memory and time of one distillation training step: shared-weights teacher vs separate teacher.

    python benchmarks/train_step_memory.py            # embedded default: Whisper tiny.en + SmolLM2-135M
    python benchmarks/train_step_memory.py --device cuda --dtype bfloat16

Each mode runs in its own subprocess (peak RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA), on the
same batch of real speech (Asterisk prompts, whole utterance + transcript). Modes:
- shared/frozen: LLM frozen, teacher = the same LLM (no second copy);
- shared/lora:   LoRA on the LLM, teacher = the LLM with LoRA switched off (no second copy);
- separate/full: LLM fully trained, teacher = a frozen copy of the original LLM.
Results go to benchmarks/results/train_step_memory_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "shared/frozen": {"train_llm": "frozen", "teacher_mode": "shared"},
    "shared/lora": {"train_llm": "lora", "teacher_mode": "shared"},
    "separate/full": {"train_llm": "full", "teacher_mode": "separate"},
}


def run_mode(mode: str, device: str, dtype: str, batch_size: int, steps: int) -> dict:
    """Runs inside the child process: build, train `steps` steps, report peak memory and step time."""
    import torch
    from embedded_training import embedded_default_trainer

    trainer = embedded_default_trainer(steps, batch_size, device, dtype, **MODES[mode])
    model = trainer.model
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - start) / steps
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "mode": mode,
        "peak_mb": round(peak_mb),
        "seconds_per_step": round(seconds, 2),
        "trainable": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.device, args.dtype, args.batch_size, args.steps)))
        return
    results = []
    for mode in MODES:
        command = [sys.executable, __file__, "--child", mode, "--device", args.device, "--dtype", args.dtype,
                   "--batch_size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    from embedded_training import report_header

    report = {
        **report_header("train_step_memory.py", args.device, args.dtype, args.batch_size, args.steps),
        "results": results,
    }
    out = Path(__file__).parent / "results" / f"train_step_memory_{args.device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| mode | peak MB | s/step | trainable params |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['peak_mb']} | {r['seconds_per_step']} | {r['trainable'] / 1e6:.1f}M |")


if __name__ == "__main__":
    main()
