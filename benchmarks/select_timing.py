"""Wall time of `salad-select` on the embedded default, split by phase, from a cold cache.

    salad-text-pool --output_dir data/text_pool      # the pool, once
    python benchmarks/select_timing.py                             # configs/paper-cpu/select.yaml
    python benchmarks/select_timing.py --num_clusters 128 --num_probes 4   # any salad-select flag overrides

The model is the untrained embedded default (`embedded:untrained`: Whisper tiny.en + a fresh MLP adapter +
SmolLM2-135M-Instruct), as Stage I's checkpoint may not exist; its speed is the same. Caches and outputs go to a
temporary folder, so every phase is measured from scratch. The load average is recorded before and after:
on a shared machine the times stretch with it. Results go to benchmarks/results/select_timing_<device>.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from trl import TrlParser

from trainers.selection.select import SelectArguments, select_synthetic_speech

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    os.chdir(REPO)
    with tempfile.TemporaryDirectory(prefix="select-timing-") as scratch:
        argv = ["--config", "configs/paper-cpu/select.yaml", "--model", "embedded:untrained"]
        argv += ["--output_dir", f"{scratch}/out", "--cache_dir", f"{scratch}/cache", *sys.argv[1:]]
        (args,) = TrlParser((SelectArguments,)).parse_args_and_config(args=argv)
        load_before = os.getloadavg()
        start = time.perf_counter()
        report = select_synthetic_speech(args)
        total = time.perf_counter() - start
        load_after = os.getloadavg()
    phases = report["timings_seconds"]
    result = {
        "command": "python benchmarks/select_timing.py " + " ".join(sys.argv[1:]),
        "machine": platform.machine(),
        "cpu_cores": os.cpu_count(),
        "device": args.device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": "embedded:untrained (Whisper tiny.en + untrained MLP adapter + SmolLM2-135M-Instruct)",
        "model_dtype": args.model_dtype,
        "embedder": f"{args.embedder} ({args.embedder_dtype})",
        "tts_backend": args.tts_backend,
        "pool_size": report["pool_size"],
        "num_clusters": report["num_clusters"],
        "num_probes": args.num_probes,
        "probe_utterances": sum(len(cluster["probe_texts"]) for cluster in report["clusters"]),
        "budget_seconds": report["budget_seconds"],
        "selected_seconds": report["selected_seconds"],
        "selected_utterances": report["selected_utterances"],
        "total_seconds": round(total, 1),
        "phases_seconds": phases,
        "split": {
            "embedding": phases["embedding"],
            "clustering": phases["clustering"],
            "probing (probe synthesis + model loading + scoring)": round(
                phases["probe_synthesis"] + phases["model_loading"] + phases["probe_scoring"], 2
            ),
            "synthesis (selected texts)": phases["synthesis"],
            "other (pool loading, writing)": round(phases["load_pool"] + phases["writing"], 2),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
    }
    output = REPO / "benchmarks" / "results" / f"select_timing_{args.device}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
