"""`salad-select`: Stage II active selection of synthetic speech from the command line.

    salad-text-pool --output_dir data/text_pool          # the offline pool (Debian text packages)
    salad-select --config configs/paper-cpu/stage2.yaml
    salad-select --config configs/paper-cpu/stage2.yaml --gamma 0 --output_dir runs/stage2-uniform

Embeds and clusters a text pool, measures the current model's misalignment M(c) on a few synthesized probes per
cluster, weighs clusters by `P_web(c) * M(c)^gamma`, and synthesizes texts drawn from those weights until the
budget of seconds of audio is spent. Writes to `output_dir`:

- `synthetic.jsonl` + `audio/`: the selected speech, rows in the `trainers.distillation.data` schema with word timestamps;
- `train_mix.jsonl`, when `natural_data_files` are given: natural and synthetic rows mixed at
  `synthetic_proportion` (the Stage II `salad-train` config reads it; text-only rows are mixed in there);
- `report.json`: per cluster its size, M(c), web and target weights, samples drawn, seconds, example texts,
  plus the time spent in each phase;
- `misalignment_per_cluster.png`: M(c) and the weights per cluster;
- `clusters.npz`: each pool text's cluster (`labels`) and the clusters' `centroids` in the embedder's space, so
  that other texts (a task set's questions) can be placed among the clusters the budget went to.

Intermediate results live in `cache_dir` (embeddings, clusters, TTS, M(c)), so a rerun resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from trl import TrlParser

from trainers.assets import load_salad
from trainers.distillation.data import load_rows, speech_row, write_rows
from trainers.files import content_hash
from trainers.selection.active_selection import (
    EMBEDDED_MINILM,
    Clustering,
    central_texts,
    cluster_embeddings,
    cluster_misalignment,
    copy_audio,
    draw_probe_sets,
    embed_texts,
    fill_budget,
    load_or_cluster,
    mix_rows,
    probe_rows,
    salad_misalignment,
    sampling_order,
    sentence_encoder,
    target_weights,
)
from trainers.tts import get_backend, synthesize_many


@dataclass
class SelectArguments:
    output_dir: str = field(
        default="runs/stage2-selection", metadata={"help": "Where the dataset, report and plot are written."}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache of embeddings, clusters, TTS and M(c) (default: <output_dir>/cache)."},
    )
    model: str = field(
        default="embedded:untrained",
        metadata={
            "help": "The current SALAD model (the Stage I checkpoint: path or Hub id). `embedded:untrained` assembles "
            "Whisper tiny.en + a fresh MLP adapter + SmolLM2-135M-Instruct offline."
        },
    )
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the model while scoring probes: float32 or bfloat16 (faster on AMX CPUs)."
        },
    )
    device: str = field(default="cpu", metadata={"help": "Device of the embedder and the model (cpu, cuda)."})
    pool_dataset_name: str | None = field(
        default=None, metadata={"help": "Text pool: a Hub dataset id or local dataset directory."}
    )
    pool_dataset_config: str | None = field(
        default=None, metadata={"help": "Configuration of pool_dataset_name."}
    )
    pool_data_files: list[str] = field(
        default_factory=lambda: ["data/text_pool/pool.jsonl"],
        metadata={
            "help": "Local text pool files (jsonl/json/csv/parquet), used when pool_dataset_name is None."
        },
    )
    pool_split: str = field(default="train", metadata={"help": "Split of the text pool."})
    pool_streaming: bool = field(
        default=False,
        metadata={"help": "Stream the pool (with max_pool_size, for corpora too large to load)."},
    )
    text_column: str = field(default="text", metadata={"help": "Column of the pool holding the text."})
    max_pool_size: int | None = field(
        default=None, metadata={"help": "Keep the first this many distinct texts of the pool (None: all)."}
    )
    max_words: int | None = field(
        default=None,
        metadata={
            "help": "Cut longer pool texts (web documents) into consecutive pieces of at most this many words."
        },
    )
    embedder: str = field(
        default=EMBEDDED_MINILM,
        metadata={
            "help": f"sentence-transformers model: `{EMBEDDED_MINILM}` (offline) or a Hub id such as "
            "BAAI/bge-large-en-v1.5 (the paper's)."
        },
    )
    embedder_dtype: str = field(
        default="float32", metadata={"help": "dtype of the embedder: float32 or bfloat16."}
    )
    embedding_batch_size: int = field(default=64, metadata={"help": "Texts per embedder forward pass."})
    num_clusters: int = field(
        default=128, metadata={"help": "K, the number of k-means clusters (paper: 128)."}
    )
    balanced: bool = field(
        default=False,
        metadata={"help": "Balanced k-means: no cluster above ceil((1 + balance_slack) * n / K) texts."},
    )
    balance_slack: float = field(
        default=0.1, metadata={"help": "Extra room per balanced cluster (0: equal sizes)."}
    )
    num_probes: int = field(
        default=8, metadata={"help": "Probe texts synthesized per cluster to measure M(c)."}
    )
    probe_voice: str | None = field(
        default=None, metadata={"help": "The one voice of the probes (None: the backend's default voice)."}
    )
    probe_continuation: str | None = field(
        default="{transcript}",
        metadata={
            "help": "Probes are scored as the whole utterance spoken, then this text ({transcript}: its transcript). "
            "None: probes are interleaved text and speech spans on word timestamps, as in training."
        },
    )
    probe_batch_size: int = field(default=8, metadata={"help": "Probe rows per forward pass while scoring."})
    gamma: float = field(
        default=5.0,
        metadata={"help": "Target weights P_web(c) * M(c)^gamma (paper: 5; 0: uniform selection)."},
    )
    budget_seconds: float = field(
        default=1800.0, metadata={"help": "Seconds of synthetic audio to select (never exceeded)."}
    )
    tts_backend: str = field(
        default="espeak-ng", metadata={"help": "TTS engine: espeak-ng, flite, transformers or kokoro."}
    )
    tts_voices: list[str] = field(
        default_factory=list,
        metadata={"help": "Voices drawn for the selected texts (empty: all of the backend's)."},
    )
    tts_rate_range: list[float] = field(
        default_factory=lambda: [0.85, 1.15],
        metadata={"help": "Speaking-rate factors drawn for the selected texts."},
    )
    tts_pitch_range: list[float] = field(
        default_factory=lambda: [0.9, 1.1], metadata={"help": "Pitch factors drawn for the selected texts."}
    )
    tts_num_workers: int = field(
        default=0, metadata={"help": "TTS worker processes (0: in this process, best on 2 cores)."}
    )
    natural_data_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Natural speech rows (trainers.distillation.data schema) to mix with the selection into train_mix.jsonl."
        },
    )
    synthetic_proportion: float = field(
        default=0.5, metadata={"help": "Share of synthetic rows in train_mix.jsonl (paper: equal parts)."}
    )
    num_examples: int = field(default=3, metadata={"help": "Example texts per cluster in the report."})
    seed: int = field(default=0, metadata={"help": "Seed of clustering, probes, voices and sampling."})

    def __post_init__(self):
        if self.pool_dataset_name is None and not self.pool_data_files:
            raise ValueError("Give pool_dataset_name or pool_data_files for the text pool.")
        if self.num_clusters < 1 or self.num_probes < 1 or self.probe_batch_size < 1:
            raise ValueError("num_clusters, num_probes and probe_batch_size must be >= 1.")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
        if self.budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be positive, got {self.budget_seconds}.")
        if not 0.0 <= self.synthetic_proportion <= 1.0:
            raise ValueError(f"synthetic_proportion must lie in [0, 1], got {self.synthetic_proportion}.")
        for name in ("tts_rate_range", "tts_pitch_range"):
            values = getattr(self, name)
            if len(values) != 2 or not 0 < values[0] <= values[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high, got {values}.")
        if self.max_words is not None and self.max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {self.max_words}.")


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall time of the block to `timings[phase]` (the benchmark's split between phases)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def load_text_pool(args: SelectArguments) -> list[str]:
    """Distinct, whitespace-normalized texts of the pool, cut into pieces of at most `max_words` words."""
    rows = load_rows(
        args.pool_dataset_name,
        args.pool_data_files,
        args.pool_split,
        args.pool_streaming,
        args.pool_dataset_config,
    )
    texts: dict[str, None] = {}
    for row in rows:
        words = str(row[args.text_column] or "").split()
        step = args.max_words or max(len(words), 1)
        for start in range(0, len(words), step):
            texts[" ".join(words[start : start + step])] = None
        if args.max_pool_size is not None and len(texts) >= args.max_pool_size:
            break
    if not texts:
        raise ValueError(f"The text pool has no text in column {args.text_column!r}.")
    return list(texts)[: args.max_pool_size]


def select_synthetic_speech(args: SelectArguments) -> dict:
    """Run Stage II selection end to end; returns the report (also written to `output_dir/report.json`)."""
    output = Path(args.output_dir)
    cache = Path(args.cache_dir) if args.cache_dir else output / "cache"
    timings: dict[str, float] = {}
    with timed(timings, "load_pool"):
        texts = load_text_pool(args)
    with timed(timings, "embedding"):
        encode = sentence_encoder(args.embedder, args.embedder_dtype, args.embedding_batch_size, args.device)
        embeddings = embed_texts(texts, encode, cache, cache_key=f"{args.embedder}:{args.embedder_dtype}")
    with timed(timings, "clustering"):
        clustering = _cluster(args, texts, embeddings, cache)
    backend = get_backend(args.tts_backend)
    probe_texts = [
        [texts[i] for i in members] for members in draw_probe_sets(clustering, args.num_probes, args.seed)
    ]
    with timed(timings, "probe_synthesis"):
        probes = _synthesize_probes(args, probe_texts, backend, cache)
    with timed(timings, "model_loading"):
        model, processor = load_salad(args.model, getattr(torch, args.model_dtype))
        model.to(args.device)
    with timed(timings, "probe_scoring"):
        measure = salad_misalignment(model, processor, args.probe_batch_size, args.probe_continuation)
        identity = [_model_identity(args.model), args.model_dtype, args.probe_continuation, backend.version]
        scores_file = cache / "misalignment" / f"{content_hash(identity, probe_texts)}.jsonl"
        misalignment = cluster_misalignment(probes, measure, scores_file)
    del model
    weights = target_weights(clustering.sizes(), misalignment, args.gamma)
    with timed(timings, "synthesis"):
        expected = float(
            np.mean([r["audio"]["array"].size / r["audio"]["sampling_rate"] for p in probes for r in p])
        )
        fill, made = _synthesize_within_budget(args, texts, clustering, weights, backend, cache, expected)
    with timed(timings, "writing"):
        selected = [
            {**made[i], "audio": copy_audio(made[i]["audio"], output / "audio")} for i in fill.indices
        ]
        write_rows(selected, output / "synthetic.jsonl")
        np.savez(output / "clusters.npz", labels=clustering.labels, centroids=clustering.centroids)
        if args.natural_data_files:
            _write_mix(args, selected, output / "train_mix.jsonl")
    report = _report(args, texts, embeddings, clustering, misalignment, weights, fill, probe_texts, timings)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_misalignment(report, output / "misalignment_per_cluster.png")
    return report


def _cluster(args: SelectArguments, texts: list[str], embeddings: np.ndarray, cache: Path) -> Clustering:
    key = content_hash(
        args.embedder,
        args.embedder_dtype,
        texts,
        args.num_clusters,
        args.balanced,
        args.balance_slack,
        args.seed,
    )
    return load_or_cluster(
        cache,
        key,
        lambda: cluster_embeddings(
            embeddings, args.num_clusters, args.seed, balanced=args.balanced, balance_slack=args.balance_slack
        ),
    )


def _synthesize_probes(args, probe_texts: list[list[str]], backend, cache: Path) -> list[list[dict]]:
    """Each cluster's probes spoken by one voice at its default rate and pitch, as scoring rows."""
    flat = [text for cluster_texts in probe_texts for text in cluster_texts]
    syntheses = synthesize_many(
        flat, backend, voices=[args.probe_voice or backend.default_voice], num_workers=args.tts_num_workers,
        cache_dir=cache / "tts", seed=args.seed, rate_range=None, pitch_range=None,
    )  # fmt: skip
    clusters = [cluster for cluster, cluster_texts in enumerate(probe_texts) for _ in cluster_texts]
    rows = probe_rows(syntheses, clusters, interleaved=args.probe_continuation is None)
    return [[row for row in rows if row["domain"] == str(cluster)] for cluster in range(len(probe_texts))]


def _model_identity(name: str) -> list:
    """What names a model's version in the M(c) cache: a local checkpoint's weight files (name, size, time
    modified), so that a retrained checkpoint at the same path is scored again; else the name itself."""
    path = Path(name)
    if not path.is_dir():
        return [name]
    files = sorted(path.glob("*.safetensors"))
    return [str(path.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _synthesize_within_budget(args, texts, clustering, weights, backend, cache, expected_duration):
    """Draw texts from the target weights and synthesize them until the budget is spent; returns the
    `BudgetFill` and, per synthesized pool index, its row (audio still pointing into the TTS cache)."""
    made: dict[int, dict] = {}

    def durations_of(indices: list[int]) -> list[float]:
        syntheses = synthesize_many(
            [texts[index] for index in indices], backend, voices=args.tts_voices or None,
            num_workers=args.tts_num_workers, cache_dir=cache / "tts", seed=args.seed,
            rate_range=tuple(args.tts_rate_range), pitch_range=tuple(args.tts_pitch_range), progress=False,
        )  # fmt: skip
        for index, synthesis in zip(indices, syntheses):
            made[index] = speech_row(synthesis, synthesis.audio_path, cluster=int(clustering.labels[index]))
        return [synthesis.duration for synthesis in syntheses]

    order = sampling_order(clustering.labels, weights, seed=args.seed)
    return fill_budget(order, durations_of, args.budget_seconds, expected_duration), made


def _write_mix(args: SelectArguments, synthetic_rows: list[dict], path: Path) -> None:
    natural = list(load_rows(None, args.natural_data_files, "train", False))
    proportions = [1 - args.synthetic_proportion, args.synthetic_proportion]
    write_rows(mix_rows([natural, synthetic_rows], proportions, seed=args.seed), path)


def _report(
    args, texts, embeddings, clustering: Clustering, misalignment, weights, fill, probe_texts, timings
):
    sizes = clustering.sizes()
    samples = np.bincount(clustering.labels[fill.indices], minlength=clustering.num_clusters)
    seconds = np.bincount(
        clustering.labels[fill.indices], weights=fill.durations, minlength=clustering.num_clusters
    )
    examples = central_texts(embeddings, clustering, args.num_examples)
    clusters = [
        {
            "cluster": cluster,
            "size": int(sizes[cluster]),
            "web_weight": float(sizes[cluster] / sizes.sum()),
            "misalignment": None if np.isnan(misalignment[cluster]) else float(misalignment[cluster]),
            "target_weight": float(weights[cluster]),
            "samples": int(samples[cluster]),
            "seconds": round(float(seconds[cluster]), 3),
            "example_texts": [texts[index] for index in examples[cluster]],
            "probe_texts": probe_texts[cluster],
        }
        for cluster in range(clustering.num_clusters)
    ]
    return {
        "pool_size": len(texts),
        "num_clusters": clustering.num_clusters,
        "cluster_size_range": [int(sizes.min()), int(sizes.max())],
        "gamma": args.gamma,
        "budget_seconds": args.budget_seconds,
        "selected_seconds": round(fill.total_seconds, 3),
        "selected_utterances": len(fill.indices),
        "next_utterance_seconds": fill.next_duration,
        "drawn_utterances": fill.drawn,
        "timings_seconds": {phase: round(seconds, 2) for phase, seconds in timings.items()},
        "arguments": asdict(args),
        "clusters": clusters,
    }


def plot_misalignment(report: dict, path: Path) -> None:
    """Bars of M(c) per cluster (sorted), with the web and target weights below: where the budget goes."""
    import matplotlib  # lazily: the optional `eval` extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use("Agg"), which must come first

    clusters = sorted(report["clusters"], key=lambda entry: entry["misalignment"] or 0.0, reverse=True)
    positions = np.arange(len(clusters))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(clusters) * 0.12), 6), sharex=True)
    top.bar(positions, [entry["misalignment"] or 0.0 for entry in clusters], color="tab:red")
    top.set_ylabel("M(c), nats per token")
    top.set_title(f"Misalignment per cluster (K={report['num_clusters']}, gamma={report['gamma']})")
    bottom.bar(positions - 0.2, [entry["web_weight"] for entry in clusters], width=0.4, label="P_web(c)")
    bottom.bar(
        positions + 0.2, [entry["target_weight"] for entry in clusters], width=0.4, label="P_target(c)"
    )
    bottom.set_ylabel("weight")
    bottom.set_xlabel("clusters, by decreasing M(c)")
    bottom.set_xticks(positions[:: max(1, len(clusters) // 16)])
    bottom.set_xticklabels([clusters[i]["cluster"] for i in positions[:: max(1, len(clusters) // 16)]])
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((SelectArguments,)).parse_args_and_config(args=argv)
    report = select_synthetic_speech(args)
    print(
        f"Selected {report['selected_utterances']} utterances ({report['selected_seconds']:.1f} s of "
        f"{report['budget_seconds']:.0f} s) from {report['pool_size']} texts in {report['num_clusters']} clusters; "
        f"wrote {args.output_dir}/synthetic.jsonl and report.json. Phases (s): {report['timings_seconds']}"
    )


if __name__ == "__main__":
    main()
