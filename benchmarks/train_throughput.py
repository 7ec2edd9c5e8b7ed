"""Training throughput of the embedded default on this machine: samples/s and seconds of audio/s, lever by lever.

    python benchmarks/train_throughput.py                       # every lever, 8 timed steps each
    python benchmarks/train_throughput.py --levers fp32 grouped stack_8 nll_only   # a CPU without bf16 units
    python benchmarks/train_throughput.py --levers nll_only bf16_units --output benchmarks/results/train_throughput_amx.json
    python benchmarks/train_throughput.py --levers whisper_decoder transcript_cache teacher_cache \
        --output benchmarks/results/train_throughput_decoder.json   # the shipped adapter, before and after the caches

The levers are cumulative: each one keeps the ones before it and changes one more thing. Each runs in its own
subprocess on the TTS training rows (`salad-prepare-data --source text_pool --output_dir data/tts`)
in the same seeded order; nothing else may use the CPU meanwhile (two torch processes on 2 cores slow each other
down 10x and more).

- `baseline`: the distillation step as experiments 04-05 trained it (`configs/embedded-default.yaml`: MLP
  adapter at stack 4, batch 8, bf16 autocast, shared teacher, forward KL, half interleaved / half "repeat"
  rows, random order);
- `fp32`: no bf16 autocast (a CPU without bf16 units emulates bf16 matmuls);
- `grouped`: rows of similar duration batched together (`train_sampling_strategy=group_by_length`), so the
  frozen encoder and the LLM stop paying for padding;
- `stack_8`: 6.25 audio tokens a second instead of 12.5 (the frozen LLM's forward and backward are most of
  a step, and its cost grows with the positions);
- `nll_only`: `alpha=0` with whole utterances, the ASR stage (`configs/embedded-default-asr.yaml`): the
  teacher's forward pass is skipped;
- `bf16_units`: bf16 autocast again, on the ASR step: pays only on a CPU with bf16 matrix units (Intel AMX,
  `amx_bf16` in /proc/cpuinfo), where fp32 leaves them idle.

The shipped `whisper_decoder` adapter has its own chain (issue 33, item 3), both levers in fp32 with rows grouped by
length, as `configs/embedded-default/stage1-adapter.yaml` trains it (forward KL, shared teacher, frozen LLM):

- `whisper_decoder`: every step runs the frozen Whisper on each audio window (the encoder on 30 s of padded input,
  the decoder one token at a time), then the residual and the LLM;
- `transcript_cache`: each window's transcript is computed once and read back from a `TranscriptCache`
  (`cache_transcripts=True`, the trainer's default): a step runs the residual and the LLM only;
- `teacher_cache`: the frozen teacher's states at each row's supervised positions are computed once and read back
  from a `TeacherCache` (`cache_teacher_states=True`): a step runs the student only;
- `decoder_bf16`: the same step under bf16 autocast, for a CPU with bf16 units (`avx512_bf16` or `amx_bf16` in
  /proc/cpuinfo; elsewhere bf16 matmuls are emulated and take minutes).

Both train two passes over just enough rows for the timed steps and time the end of the second pass, whose windows
the cache has all met (every epoch after the first, in a real run).

The first 2 steps of each run are not timed (allocation, dataloader start). Speedups are in seconds of audio
per second, against the first lever measured (a batch of interleaved rows holds less audio than one of whole utterances, so
samples per second alone would flatter `nll_only`). Results: `benchmarks/results/train_throughput_cpu.json` and
the table in `benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from loss_memory import machine_info  # a sibling script: benchmarks/ is on sys.path when one runs

BASELINE = {
    "adapter_type": "mlp", "adapter_stack_factor": 4, "bf16": True, "train_sampling_strategy": "random",
    "alpha": 1.0, "interleave_probability": 0.5, "cache_transcripts": False,
}  # fmt: skip
CHANGES = {
    "baseline": {},
    "fp32": {"bf16": False},
    "grouped": {"train_sampling_strategy": "group_by_length"},
    "stack_8": {"adapter_stack_factor": 8},
    "nll_only": {"alpha": 0.0, "interleave_probability": 0.0},
    "bf16_units": {"bf16": True},
}
# The shipped adapter's chain (issue 33): Stage I as `configs/embedded-default/stage1-adapter.yaml` trains it, then
# with each audio window's Whisper transcript computed once and read from the cache.
DECODER_BASELINE = {
    "adapter_type": "whisper_decoder", "adapter_stack_factor": 4, "bf16": False,
    "train_sampling_strategy": "group_by_length", "alpha": 1.0, "interleave_probability": 0.5,
    "cache_transcripts": False, "cache_teacher_states": False,
}  # fmt: skip
DECODER_CHANGES = {
    "whisper_decoder": {},
    "transcript_cache": {"cache_transcripts": True},
    "teacher_cache": {"cache_teacher_states": True},
    "decoder_bf16": {"bf16": True},
}
CHAINS = ((BASELINE, CHANGES), (DECODER_BASELINE, DECODER_CHANGES))
LEVERS = [lever for _, changes in CHAINS for lever in changes]
BATCH_SIZE = 8
WARMUP_STEPS = 2


def lever_settings(name: str) -> dict:
    """The settings of lever `name`: its chain's baseline with every change up to and including this one."""
    for baseline, changes in CHAINS:
        settings = dict(baseline)
        for lever, change in changes.items():
            settings.update(change)
            if lever == name:
                return settings
    raise ValueError(f"Unknown lever {name!r}; choose from {LEVERS}.")


def run_lever(name: str, steps: int, data_file: str) -> dict:
    """Inside the child process: build the model, train `steps + WARMUP_STEPS` steps, time the last `steps`."""
    import tempfile

    import torch
    from transformers import TrainerCallback

    from trainers.distillation.config import SaladDataArguments, SaladDistillationConfig, SaladModelArguments
    from trainers.distillation.data import build_train_dataset
    from trainers.distillation.train import load_model_and_processor
    from trainers.distillation.trainer import SaladDistillationTrainer

    settings = lever_settings(name)
    torch.manual_seed(0)
    model, processor = load_model_and_processor(
        SaladModelArguments(
            audio_encoder="embedded:whisper-tiny.en", language_model="embedded:smollm2-135m-instruct",
            adapter_type=settings["adapter_type"], adapter_stack_factor=settings["adapter_stack_factor"],
            adapter_intermediate_size=1024,
        )
    )  # fmt: skip
    # The decoder chain trains two passes over just enough rows and times the end of the second: its windows were
    # all met in the first, as in every epoch after a cached run's first (both of its levers time the same steps).
    passes = 2 if settings["adapter_type"] == "whisper_decoder" else 1
    args = SaladDistillationConfig(
        output_dir=tempfile.mkdtemp(), max_steps=passes * (steps + WARMUP_STEPS), per_device_train_batch_size=BATCH_SIZE,
        continuation="Repeat what was said: {transcript}", interleave_probability=settings["interleave_probability"],
        alpha=settings["alpha"], text_only_ratio=0.0, train_llm="frozen", teacher_mode="shared", bf16=settings["bf16"],
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=1, seed=0,
        learning_rate=1e-3, train_sampling_strategy=settings["train_sampling_strategy"], length_column_name="duration",
        cache_transcripts=settings["cache_transcripts"],
        cache_teacher_states=settings.get("cache_teacher_states", False),
    )  # fmt: skip
    dataset = build_train_dataset(SaladDataArguments(data_files=[data_file]), args)
    if passes > 1:
        dataset = dataset.select(range((steps + WARMUP_STEPS) * BATCH_SIZE))
    stamps: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append((time.perf_counter(), trainer._speech_seconds_seen))

    trainer = SaladDistillationTrainer(
        model=model, args=args, processing_class=processor, train_dataset=dataset
    )
    trainer.add_callback(StepClock())
    trainer.train()
    (start, audio_start), (end, audio_end) = stamps[-steps - 1], stamps[-1]
    seconds = end - start
    return {
        "lever": name,
        **settings,
        "timed_steps": steps,
        "seconds_per_step": round(seconds / steps, 3),
        "samples_per_second": round(steps * BATCH_SIZE / seconds, 3),
        "audio_seconds_per_second": round((audio_end - audio_start) / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levers", nargs="+", default=list(CHANGES), choices=LEVERS)
    parser.add_argument("--steps", type=int, default=8, help="Timed steps per lever.")
    parser.add_argument("--data_file", default="data/tts/train.jsonl")
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parent / "results" / "train_throughput_cpu.json")
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_lever(args.child, args.steps, args.data_file)))
        return
    if not Path(args.data_file).is_file():
        sys.exit(f"{args.data_file} not found: salad-prepare-data --source text_pool --output_dir data/tts")
    results = []
    for name in args.levers:
        command = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--steps",
            str(args.steps),
            "--data_file",
            args.data_file,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    reference = results[0]  # the first lever measured: `baseline`, unless --levers starts later
    for result in results:
        result["speedup_vs_first"] = round(
            result["audio_seconds_per_second"] / reference["audio_seconds_per_second"], 2
        )
    report = {
        "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]]),
        "machine": machine_info("cpu"),
        "bf16_units": sorted({"avx512_bf16", "amx_bf16"} & set(Path("/proc/cpuinfo").read_text().split())),
        "batch_size": BATCH_SIZE,
        "results": results,
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"| lever | s/step | samples/s | audio s/s | speedup vs {reference['lever']} |\n|---|---:|---:|---:|---:|"
    )
    for r in results:
        print(f"| {r['lever']} | {r['seconds_per_step']} | {r['samples_per_second']} | "
              f"{r['audio_seconds_per_second']} | {r['speedup_vs_first']} |")  # fmt: skip


if __name__ == "__main__":
    main()
