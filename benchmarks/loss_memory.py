"""Peak memory and time of one forward + backward of the distillation loss: fused, chunked, materialized.

The implementations see the same inputs (batch 1, N positions, a frozen LM head shared by student and
teacher, as when the LLM is frozen or LoRA-tuned and serves as its own teacher):

- `trl_materialized`: student and teacher logits `[1, N, V]` built in full and fed to TRL's
  `GKDTrainer.generalized_jsd_loss` (TRL 1.16: `trl.experimental.gkd`), the usual way to write this loss.
  `--divergence forward_kl` passes TRL `beta=0`, which TRL evaluates as KL(teacher || student);
  `--divergence jsd` passes `beta=0.5` to both sides. TRL gets the logits in the model's dtype (no upcast).
- `salad_materialized`: `trainers.distillation.losses.distillation_loss(implementation="materialized")`, same maths as the chunked one.
- `salad_chunked_<C>`: `trainers.distillation.losses.distillation_loss(implementation="recompute")` with `chunk_size=C`, from hidden states
  (`loss_implementation: recompute`: each chunk's logits are recomputed in backward).
- `salad_fused_<C>`: `trainers.distillation.losses.distillation_loss(implementation="fused")` with `chunk_size=C` (`loss_implementation:
  fused`, the default): each chunk's gradients are taken during forward, its logits built once.

Each measurement runs in its own subprocess, so one configuration's allocations cannot hide another's. On CPU
the peak is the process's peak resident set size (`getrusage` `ru_maxrss`) minus its resident size after setup
(inputs created, a small warm-up done); torch's CPU allocations are plain malloc/mmap, which `tracemalloc`
does not see. On CUDA it is `torch.cuda.max_memory_allocated()` minus the memory allocated after setup.

    python benchmarks/loss_memory.py --chunk-sizes 1024 256   # CPU fp32 -> results/loss_memory_cpu.json
    python benchmarks/loss_memory.py --models qwen2.5 smollm2 --seq-lens 512 2048 --chunk-sizes 256 --repeats 5
    python benchmarks/loss_memory.py --device cuda --chunk-sizes 1024 256   # bf16 -> results/loss_memory_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MODELS = {"qwen2.5": (151_936, 2048), "smollm2": (49_152, 576)}  # name: (vocab size, hidden size)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_loss_fn(impl: str, divergence: str):
    """A function (student_hidden, teacher_hidden, head_weight) -> scalar loss for one implementation."""
    if impl == "trl_materialized":
        from trl.experimental.gkd import GKDTrainer

        trl_beta = 0.0 if divergence == "forward_kl" else 0.5

        def trl_loss(student_hidden, teacher_hidden, head_weight):
            student_logits = student_hidden @ head_weight.T
            with torch.no_grad():
                teacher_logits = teacher_hidden @ head_weight.T
            return GKDTrainer.generalized_jsd_loss(
                student_logits[None],
                teacher_logits[None],
                beta=trl_beta,
                num_items_in_batch=student_hidden.shape[0],
            )

        return trl_loss

    from trainers.distillation.losses import distillation_loss

    kind = impl.split("_")[1]  # salad_materialized, salad_chunked_<C>, salad_fused_<C>
    implementation = {"materialized": "materialized", "chunked": "recompute", "fused": "fused"}[kind]
    chunk_size = (
        1024 if kind == "materialized" else int(impl.rsplit("_", 1)[1])
    )  # unused by the materialized one
    return lambda student_hidden, teacher_hidden, head_weight: (
        distillation_loss(
            student_hidden,
            teacher_hidden,
            head_weight,
            head_weight,
            divergence=divergence,
            implementation=implementation,
            chunk_size=chunk_size,
        ).loss
    )


def worker(spec: dict) -> dict:
    """Measure one configuration in this process and return the result."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    vocab, hidden, seq_len = spec["vocab"], spec["hidden"], spec["seq_len"]
    loss_fn = make_loss_fn(spec["impl"], spec["divergence"])
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale):
        # In-place scaling: no temporary copy, so setup never peaks above what it keeps.
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype).mul_(scale)

    # Logits with a standard deviation of about 2; the teacher's hidden states are the student's plus noise.
    head_weight = randn(vocab, hidden, scale=2 * hidden**-0.5).requires_grad_(spec["train_head"])
    student_hidden = randn(seq_len, hidden, scale=1.0).requires_grad_()
    teacher_hidden = randn(seq_len, hidden, scale=0.5).add_(student_hidden.detach())

    def step(num_positions):
        loss = loss_fn(student_hidden[:num_positions], teacher_hidden[:num_positions], head_weight)
        loss.backward()
        return loss.detach().float().item()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(8)  # warm-up: kernels, thread pools, lazy imports
    student_hidden.grad = head_weight.grad = None
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline, peak_during_setup = resident_mb(), peak_resident_mb()

    seconds, cpu_seconds = [], []
    for _ in range(spec["repeats"]):
        student_hidden.grad = head_weight.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step(seq_len)
        synchronize()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)

    result = {
        "loss": loss,
        "grad_norm": student_hidden.grad.float().norm().item(),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }
    if device.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    else:
        peak = peak_resident_mb()
        result["peak_mb"] = peak - baseline
        # ru_maxrss is a high-water mark: if setup went higher than the measured step, the step's own peak is
        # hidden below it and the number above is only a lower bound.
        result["peak_is_lower_bound"] = peak <= peak_during_setup
    return result


def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
        with open("/proc/meminfo") as meminfo:
            info["memory_gb"] = round(int(meminfo.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def run_one(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"not measured: did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        signal = -done.returncode
        reason = f"killed by signal {signal} (out of memory?)" if signal > 0 else "failed"
        return {"status": reason, "stderr_tail": done.stderr[-2000:]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def markdown_table(rows: list[dict]) -> str:
    """One row per configuration: median wall and CPU seconds over the repeats, and both relative to TRL's."""
    lines = [
        "| model | V | H | seq | implementation | peak MB | peak / TRL | median wall s | wall / TRL | median CPU s "
        "| loss - TRL | grad norm rel. diff |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        head = f"| {row['model']} | {row['vocab']:,} | {row['hidden']} | {row['seq_len']} | {row['impl']} |"
        if row["status"] != "ok":
            lines.append(f"{head} {row['status']} | | | | | | |")
            continue
        peak = f"{row['peak_mb']:,.0f}" + (" (lower bound)" if row.get("peak_is_lower_bound") else "")
        diff, grad = row.get("loss_diff_vs_trl"), row.get("grad_norm_rel_diff_vs_trl")
        peak_ratio, wall_ratio = row.get("peak_vs_trl"), row.get("wall_vs_trl")
        lines.append(
            f"{head} {peak} | {'' if peak_ratio is None else f'{peak_ratio:.3f}'} | "
            f"{statistics.median(row['seconds']):.2f} | {'' if wall_ratio is None else f'{wall_ratio:.2f}'} | "
            f"{statistics.median(row['cpu_seconds']):.2f} | {'' if diff is None else f'{diff:+.1e}'} | "
            f"{'' if grad is None else f'{grad:.1e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--chunk-sizes", nargs="+", type=int, default=[1024])
    parser.add_argument(
        "--implementations",
        nargs="+",
        choices=["trl_materialized", "salad_materialized", "salad_chunked", "salad_fused"],
        default=["trl_materialized", "salad_materialized", "salad_chunked", "salad_fused"],
        help="what to measure (chunked and fused once per --chunk-sizes); ratios need trl_materialized",
    )
    parser.add_argument("--divergence", choices=["forward_kl", "jsd"], default="forward_kl")
    parser.add_argument("--train-head", action="store_true", help="the LM head also gets gradients")
    parser.add_argument(
        "--repeats", type=int, help="timed runs per configuration (default: 1 on CPU, 5 on CUDA)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per configuration")
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/loss_memory_<device>.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    repeats = args.repeats or (1 if args.device == "cpu" else 5)
    impls = [impl for impl in ("trl_materialized", "salad_materialized") if impl in args.implementations]
    impls += [
        f"{kind}_{c}"
        for c in args.chunk_sizes
        for kind in ("salad_chunked", "salad_fused")
        if kind in args.implementations
    ]
    rows = []
    for model in args.models:
        vocab, hidden = MODELS[model]
        for seq_len in args.seq_lens:
            reference = None
            for impl in impls:
                spec = {
                    "device": args.device,
                    "dtype": dtype,
                    "vocab": vocab,
                    "hidden": hidden,
                    "seq_len": seq_len,
                    "impl": impl,
                    "divergence": args.divergence,
                    "train_head": args.train_head,
                    "repeats": repeats,
                }
                # Other work on the machine slows the timings (not the memory): keep the load next to them.
                load = round(os.getloadavg()[0], 2)
                row = {"model": model, **spec, "load_average_1min": load, **run_one(spec, args.timeout)}
                if row["status"] == "ok" and impl == "trl_materialized":
                    reference = row
                elif row["status"] == "ok" and reference is not None:
                    row["loss_diff_vs_trl"] = row["loss"] - reference["loss"]
                    row["grad_norm_rel_diff_vs_trl"] = abs(row["grad_norm"] / reference["grad_norm"] - 1)
                    row["peak_vs_trl"] = row["peak_mb"] / reference["peak_mb"]
                    row["wall_vs_trl"] = statistics.median(row["seconds"]) / statistics.median(
                        reference["seconds"]
                    )
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)

    output = args.output or RESULTS_DIR / f"loss_memory_{args.device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.device),
        "settings": {
            "dtype": dtype,
            "divergence": args.divergence,
            "trl_beta": 0.0 if args.divergence == "forward_kl" else 0.5,
            "train_head": args.train_head,
            "repeats": repeats,
            "batch_size": 1,
            "peak_mb": "CUDA: max_memory_allocated - allocated after setup; CPU: peak RSS - RSS after setup",
            "seconds": "wall time of forward + backward of one step, one entry per repeat",
            "cpu_seconds": "CPU time of the process (all threads) for the same step; other work on the "
            "machine (see load_average_1min) inflates it as well as the wall time",
        },
        "results": rows,
    }
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{markdown_table(rows)}\n\nwritten to {output}")


if __name__ == "__main__":
    main()
