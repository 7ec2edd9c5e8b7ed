"""Stage II active selection: weights, budget, sampling, clustering, caching, the salad-select pipeline, the pool.

Everything runs on fakes built here (a hashing sentence embedder, a tone-making TTS backend, the tiny SALAD model
of conftest), so the suite is fast and offline; the real text pool is built only where its Debian packages are.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ToneBackend, build_tiny, tone
from hypothesis import given, settings
from hypothesis import strategies as st
from trl import TrlParser

from trainers.selection import select, text_pool
from trainers.selection.active_selection import (
    Clustering,
    capacitated_assignment,
    cluster_capacity,
    cluster_embeddings,
    cluster_misalignment,
    draw_probe_sets,
    embed_texts,
    fill_budget,
    mix_rows,
    salad_misalignment,
    sampling_order,
    target_weights,
)
from trainers.selection.select import SelectArguments, select_synthetic_speech

REPO = Path(__file__).parent.parent


def blobs(sizes: list[int], dim: int = 8, seed: int = 0) -> np.ndarray:
    """Gaussian blobs of the given sizes around random unit centers (unit-norm points, like sentence embeddings)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim))
    points = np.concatenate([c + 0.15 * rng.standard_normal((n, dim)) for c, n in zip(centers, sizes)])
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Target weights


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 5.0])
def test_target_weights_follow_m_to_the_gamma(gamma):
    rng = np.random.default_rng(0)
    web, misalignment = rng.integers(1, 100, 16).astype(float), rng.uniform(0.1, 4.0, 16)
    weights = target_weights(web, misalignment, gamma)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    ratio = weights / (web * misalignment**gamma)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)


def test_gamma_zero_gives_the_web_distribution_whatever_m():
    web = np.array([5.0, 1.0, 0.0, 4.0])
    weights = target_weights(web, np.array([9.0, 0.0, np.nan, 0.3]), gamma=0.0)
    np.testing.assert_array_equal(weights, web / web.sum())  # bitwise: M ** 0 is exactly 1


def test_target_weights_errors():
    with pytest.raises(ValueError, match="gamma"):
        target_weights(np.ones(2), np.ones(2), -1.0)
    with pytest.raises(ValueError, match="finite, non-negative"):
        target_weights(np.ones(2), np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="shapes"):
        target_weights(np.ones(2), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="All target weights are 0"):
        target_weights(np.ones(2), np.zeros(2), 2.0)


# ---------------------------------------------------------------------------------------------------------
# Budget and sampling


@settings(max_examples=60, deadline=None)
@given(
    durations=st.lists(st.floats(0.2, 20.0), min_size=1, max_size=80),
    budget=st.floats(0.5, 300.0),
    expected=st.floats(0.1, 30.0),
)
def test_budget_is_never_exceeded_and_filled_to_within_one_utterance(durations, budget, expected):
    fill = fill_budget(range(len(durations)), lambda batch: [durations[i] for i in batch], budget, expected)
    assert fill.total_seconds <= budget
    assert fill.indices == list(range(len(fill.indices)))  # accepted in drawing order, none skipped
    if fill.next_duration is None:  # the pool ran out before the budget
        assert len(fill.indices) == len(durations)
    else:
        assert budget - fill.total_seconds < fill.next_duration
        assert fill.next_duration == durations[len(fill.indices)]


def test_fill_budget_synthesizes_in_batches_and_rejects_bad_input():
    calls = []

    def durations_of(batch):
        calls.append(len(batch))
        return [2.0] * len(batch)

    fill = fill_budget(iter(range(1000)), durations_of, budget_seconds=101.0, expected_duration=4.0)
    assert len(fill.indices) == 50 and fill.total_seconds == 100.0 and fill.next_duration == 2.0
    assert sum(calls) < 60  # synthesized about what the budget needs, not the whole pool
    with pytest.raises(ValueError, match="budget_seconds"):
        fill_budget(range(3), durations_of, 0.0, 1.0)


def test_sampling_is_reproducible_with_a_seed_and_draws_without_replacement():
    labels = np.repeat(np.arange(5), [30, 10, 50, 5, 5])
    weights = np.array([0.1, 0.4, 0.2, 0.3, 0.0])
    first = list(sampling_order(labels, weights, seed=3))
    assert first == list(sampling_order(labels, weights, seed=3))
    assert first != list(sampling_order(labels, weights, seed=4))
    assert (
        len(first) == len(set(first)) == 95
    )  # every text of a positive-weight cluster once, cluster 4 never
    assert not set(first) & set(np.flatnonzero(labels == 4))


def test_sampling_follows_the_cluster_weights_while_clusters_last():
    labels = np.repeat(np.arange(4), 5000)
    weights = np.array([0.5, 0.3, 0.15, 0.05])
    order = sampling_order(labels, weights, seed=0)
    drawn = labels[[next(order) for _ in range(4000)]]
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / drawn.size, weights, atol=0.03)


def test_selection_with_a_budget_is_reproducible():
    labels = np.repeat(np.arange(3), 40)
    durations = np.random.default_rng(0).uniform(1, 6, labels.size)
    runs = [
        fill_budget(
            sampling_order(labels, np.array([0.2, 0.3, 0.5]), seed=7),
            lambda b: durations[b],
            60.0,
            3.0,
        ).indices
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------------------
# Clustering


@pytest.mark.parametrize("balanced", [False, True])
def test_clusters_partition_the_pool(balanced):
    embeddings = blobs([120, 60, 20, 100])
    clustering = cluster_embeddings(embeddings, 6, seed=0, balanced=balanced)
    assert clustering.labels.shape == (300,) and clustering.centroids.shape == (6, 8)
    members = clustering.members()
    assert len(members) == 6
    np.testing.assert_array_equal(
        np.sort(np.concatenate(members)), np.arange(300)
    )  # bitwise: integer indices
    assert sum(m.size for m in members) == 300  # disjoint
    assert all((clustering.labels[m] == c).all() for c, m in enumerate(members))


@pytest.mark.parametrize("slack", [0.0, 0.1, 0.5])
def test_balanced_clusters_stay_within_the_stated_bound(slack):
    embeddings = blobs([400, 30, 30, 20, 20])  # one dominant topic: plain k-means is lopsided
    num_clusters = 5
    capacity = cluster_capacity(len(embeddings), num_clusters, slack)
    plain = cluster_embeddings(embeddings, num_clusters, seed=0).sizes()
    sizes = cluster_embeddings(embeddings, num_clusters, seed=0, balanced=True, balance_slack=slack).sizes()
    assert plain.max() > capacity
    assert sizes.max() <= capacity
    assert sizes.min() >= len(embeddings) - (num_clusters - 1) * capacity
    if slack == 0.0:
        assert (sizes == 100).all()


def test_capacitated_assignment_is_nearest_when_capacity_allows_and_errors_when_impossible():
    distances = np.random.default_rng(0).uniform(size=(50, 4))
    np.testing.assert_array_equal(
        capacitated_assignment(distances, 50), distances.argmin(1)
    )  # integer labels
    labels = capacitated_assignment(distances, 13)
    assert (labels >= 0).all() and np.bincount(labels).max() <= 13
    with pytest.raises(ValueError, match="cannot hold"):
        capacitated_assignment(distances, 12)
    with pytest.raises(ValueError, match="num_clusters"):
        cluster_embeddings(blobs([3]), 4)


def test_probe_sets_are_drawn_inside_each_cluster():
    clustering = Clustering(np.repeat(np.arange(3), [10, 2, 7]), np.zeros((3, 2)))
    probes = draw_probe_sets(clustering, 4, seed=0)
    assert [p.size for p in probes] == [4, 2, 4]
    assert all((clustering.labels[p] == c).all() and len(set(p)) == p.size for c, p in enumerate(probes))
    np.testing.assert_array_equal(probes[0], draw_probe_sets(clustering, 4, seed=0)[0])  # integer indices


# ---------------------------------------------------------------------------------------------------------
# Caching and resuming


def hashing_encoder(texts: list[str], dim: int = 32) -> np.ndarray:
    """A bag-of-words embedder: each word adds a pseudo-random vector; texts sharing words end up close."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
            out[row] += np.random.default_rng(seed).standard_normal(dim)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def test_embeddings_are_cached_per_chunk_and_resume(tmp_path):
    texts = [f"text number {i}" for i in range(10)]
    calls = []

    def encode(batch):
        calls.append(len(batch))
        return hashing_encoder(batch)

    first = embed_texts(texts, encode, tmp_path, cache_key="fake", chunk_size=3)
    # bitwise below: what the cache restores is what was stored
    assert calls == [3, 3, 3, 1]
    np.testing.assert_array_equal(embed_texts(texts, encode, tmp_path, cache_key="fake", chunk_size=3), first)
    assert calls == [3, 3, 3, 1]
    next((tmp_path / "embeddings").glob("*/chunk-000002.npy")).unlink()  # as if killed during chunk 2
    np.testing.assert_array_equal(embed_texts(texts, encode, tmp_path, cache_key="fake", chunk_size=3), first)
    assert calls == [3, 3, 3, 1, 3]


def test_cluster_misalignment_resumes_from_its_cache(tmp_path):
    measured = []

    def measure(rows):
        measured.append(rows[0]["domain"])
        return float(len(rows))

    probes = [[{"domain": "0"}] * 2, [], [{"domain": "2"}] * 3]
    cache = tmp_path / "m.jsonl"
    cache.write_text(json.dumps({"cluster": 0, "misalignment": 7.0}) + "\n")  # a run killed after cluster 0
    values = cluster_misalignment(probes, measure, cache)
    assert measured == ["2"]
    np.testing.assert_array_equal(values, [7.0, np.nan, 3.0])  # bitwise: restored from the cache, or exact
    np.testing.assert_array_equal(cluster_misalignment(probes, measure, cache), values)
    assert measured == ["2"]


def test_mix_rows_uses_every_row_at_the_proportion_with_one_schema():
    natural = [{"text": f"n{i}", "name": i} for i in range(300)]
    synthetic = [{"text": f"s{i}", "words": [f"s{i}"]} for i in range(20)]
    mixed = mix_rows([natural, synthetic], [0.5, 0.5], seed=0)
    assert mixed == mix_rows([natural, synthetic], [0.5, 0.5], seed=0)
    texts = [row["text"] for row in mixed]
    assert {row["text"] for row in natural + synthetic} <= set(texts)
    assert all(set(row) == {"text", "name", "words"} for row in mixed)
    share = sum(text.startswith("s") for text in texts) / len(texts)
    assert 0.42 < share < 0.58
    assert all(not row["text"].startswith("s") for row in mix_rows([natural, synthetic], [1.0, 0.0]))
    with pytest.raises(ValueError, match="no rows"):
        mix_rows([natural, []], [0.5, 0.5])


def test_misalignment_of_the_tiny_model_is_positive_and_finite():
    model, processor = build_tiny("whisper")
    rows = [
        {"text": "the quick brown fox", "audio": {"array": tone(0.8, seed=i), "sampling_rate": 16000}}
        for i in range(3)
    ]
    value = salad_misalignment(model, processor, batch_size=2)(rows)
    assert np.isfinite(value) and value > 0


# ---------------------------------------------------------------------------------------------------------
# salad-select end to end, on fakes


TOPICS = {
    "animals": "the dog cat horse cow bird fish runs eats sleeps in the barn field",
    "code": "the program compiles code bug kernel file memory crash server network",
    "food": "the bread cheese soup apple cake tastes sweet warm fresh kitchen dinner",
}


def pool_texts(per_topic: int = 20) -> list[str]:
    rng = np.random.default_rng(0)
    texts = []
    for words in TOPICS.values():
        vocabulary = words.split()
        texts += [" ".join(rng.choice(vocabulary, int(rng.integers(4, 9)))) for _ in range(per_topic)]
    return list(dict.fromkeys(texts))


@pytest.fixture
def fake_stage2(tmp_path, monkeypatch):
    """Pool and natural speech files, with the embedder, TTS engine and model replaced by fakes."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": text, "source": "test"}) + "\n" for text in pool_texts()))
    natural = tmp_path / "natural.jsonl"
    natural.write_text(
        "".join(
            json.dumps({"text": f"hello {i}", "audio": f"/nowhere/{i}.wav", "name": i}) + "\n"
            for i in range(12)
        )
    )
    monkeypatch.setattr(select, "sentence_encoder", lambda *args: hashing_encoder)
    monkeypatch.setattr(select, "get_backend", lambda name: ToneBackend())
    monkeypatch.setattr("eval.harness.load_salad", lambda name, dtype: build_tiny("whisper"))
    return pool, natural


def test_salad_select_writes_a_dataset_the_trainer_reads(fake_stage2, tmp_path):
    from trainers.distillation.data import SaladDistillationCollator, load_rows

    pool, natural = fake_stage2
    args = SelectArguments(
        output_dir=str(tmp_path / "out"), pool_data_files=[str(pool)], num_clusters=3, num_probes=2,
        budget_seconds=6.0, natural_data_files=[str(natural)], gamma=2.0,
    )  # fmt: skip
    report = select_synthetic_speech(args)
    out = Path(args.output_dir)
    rows = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    durations = [row["duration"] for row in rows]
    assert sum(durations) <= 6.0 and report["selected_seconds"] == pytest.approx(sum(durations), abs=1e-3)
    assert 6.0 - report["selected_seconds"] < report["next_utterance_seconds"]
    assert all(Path(row["audio"]).is_file() and len(row["words"]) == len(row["word_starts"]) for row in rows)
    assert {"size", "misalignment", "target_weight", "samples", "example_texts"} <= set(report["clusters"][0])
    assert sum(c["samples"] for c in report["clusters"]) == len(rows) == report["selected_utterances"]
    assert sum(c["size"] for c in report["clusters"]) == report["pool_size"]
    assert (out / "misalignment_per_cluster.png").stat().st_size > 0
    with np.load(out / "clusters.npz") as clusters:  # where other texts can be placed among the clusters
        assert np.bincount(clusters["labels"]).tolist() == [c["size"] for c in report["clusters"]]
        assert clusters["centroids"].shape == (3, hashing_encoder(["x"]).shape[1])
    assert {"embedding", "clustering", "probe_synthesis", "probe_scoring", "synthesis"} <= set(
        report["timings_seconds"]
    )
    dataset = load_rows(None, [str(out / "train_mix.jsonl")], "train", False)
    assert {"text", "audio", "name", "words", "word_starts", "cluster"} <= set(dataset.column_names)
    _, processor = build_tiny("whisper")
    collator = SaladDistillationCollator(processor, text_span=(1, 2), speech_span=(1, 2))
    batch = collator([row for row in dataset if row["words"]][:2])
    assert batch["target_ids"].numel() > 0

    calls = ToneBackend.calls
    again = select_synthetic_speech(args)  # everything cached: no synthesis, the same selection
    assert ToneBackend.calls == calls
    assert (out / "synthetic.jsonl").read_text().splitlines() == [json.dumps(row) for row in rows]
    assert [c["misalignment"] for c in again["clusters"]] == [c["misalignment"] for c in report["clusters"]]


def test_gamma_zero_selects_like_the_pool(fake_stage2, tmp_path):
    pool, _ = fake_stage2
    args = SelectArguments(
        output_dir=str(tmp_path / "uniform"), pool_data_files=[str(pool)], num_clusters=3, num_probes=1,
        budget_seconds=3.0, gamma=0.0,
    )  # fmt: skip
    report = select_synthetic_speech(args)
    for cluster in report["clusters"]:
        assert cluster["target_weight"] == pytest.approx(cluster["web_weight"])


@pytest.mark.parametrize(
    "path", sorted(REPO.glob("configs/**/select*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_shipped_select_configs_parse(path):
    (args,) = TrlParser((SelectArguments,)).parse_args_and_config(args=["--config", str(path)])
    assert args.gamma >= 0 and args.budget_seconds > 0


# ---------------------------------------------------------------------------------------------------------
# The text pool


def test_sentence_splitting_and_filters():
    args = text_pool.TextPoolArguments(output_dir="unused")
    text = text_pool.normalize(
        "Mr. Smith went to Washington. He said: “hello there, my friends!” Then he left…"
    )
    assert text_pool.split_sentences(text) == [
        "Mr. Smith went to Washington.",
        'He said: "hello there, my friends!"',
        "Then he left...",
    ]
    assert text_pool.is_speakable("The quick brown fox jumps over the dog.", args)
    assert not text_pool.is_speakable("Too short.", args)
    assert not text_pool.is_speakable("int main() { return 0; } is what the code said.", args)
    assert not text_pool.is_speakable("a sentence that never ends with a stop", args)
    assert text_pool.dedup_key("Hello, World!") == text_pool.dedup_key("hello world")


def test_the_text_pool_is_built_by_default_where_the_training_configs_read_it():
    """`salad-text-pool` with no arguments (as the READMEs say) writes the pool the configs name."""
    (args,) = TrlParser((text_pool.TextPoolArguments,)).parse_args_and_config(args=[])
    configs = Path(__file__).resolve().parents[1] / "configs"
    read = {
        line.strip()
        for c in configs.glob("**/*.yaml")
        for line in c.read_text().splitlines()
        if "pool.jsonl" in line
    }
    assert read and all(f"{args.output_dir}/pool.jsonl" in line for line in read), read


def test_text_pool_sources_parse_their_package_formats(tmp_path):
    (tmp_path / "fortunes").mkdir()
    (tmp_path / "fortunes" / "wisdom").write_text(
        "A banker lends you an umbrella.\n\t\t-- Mark Twain\n%\nSecond.\n"
    )
    (tmp_path / "fortunes" / "ascii-art").write_text("  /\\_/\\ \n")
    assert list(text_pool.fortune_paragraphs(tmp_path / "fortunes")) == [
        ("fortunes/wisdom", "A banker lends you an umbrella."),
        ("fortunes/wisdom", "Second."),
    ]
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    (wordnet / "data.noun").write_text(
        "  1 license header line\n"
        '00005930 03 n 01 dwarf 0 001 @ 00004475 n 0000 | a plant that is small; "the dwarf grew slowly"  \n'
        "00005787 03 n 01 benthos 0 000 | organisms that live at the bottom of a sea  \n"
    )
    for part in ("verb", "adj", "adv"):
        (wordnet / f"data.{part}").write_text("")
    assert list(text_pool.wordnet_paragraphs(wordnet)) == [
        ("wordnet/example", "The dwarf grew slowly."),
        ("wordnet/definition", "A dwarf is a plant that is small."),
    ]
    jargon = tmp_path / "jargon.txt.gz"
    with gzip.open(jargon, "wt") as handle:
        handle.write(":cruft: n.\n\n   An unpleasant substance, see {kludge}.\n   It is bad.\n")
    assert list(text_pool.jargon_paragraphs(jargon)) == [
        ("jargon", "An unpleasant substance, see kludge.\n   It is bad.")
    ]


@pytest.mark.assets
@pytest.mark.skipif(
    not (
        text_pool.FORTUNE_DIR.is_dir() and text_pool.WORDNET_DIR.is_dir() and text_pool.JARGON_FILE.exists()
    ),
    reason="needs `apt-get install fortunes wordnet-base jargon-text`",
)
def test_the_offline_pool_has_twenty_thousand_distinct_sentences(tmp_path):
    provenance = text_pool.build_text_pool(text_pool.TextPoolArguments(output_dir=str(tmp_path)))
    rows = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    assert provenance["num_sentences"] == len(rows) >= 20_000
    assert len({text_pool.dedup_key(row["text"]) for row in rows}) == len(rows)
    assert set(provenance["sources"]) == {"fortunes", "wordnet", "jargon"}
    assert all(5 <= len(row["text"].split()) <= 40 for row in rows)
