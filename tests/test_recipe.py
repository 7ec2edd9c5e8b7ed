"""The small recipe's defaults: bf16 evaluation only where the machine computes bf16 natively."""

from __future__ import annotations

import pytest

from hub_scripts import recipe


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 fma", "float32"),
        ("avx512f avx512_bf16", "bfloat16"),
        ("amx_bf16 amx_tile", "bfloat16"),
    ],
)
def test_bf16_only_where_the_cpu_computes_it(monkeypatch, tmp_path, flags, expected):
    monkeypatch.setattr(recipe.torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(recipe, "CPUINFO", cpuinfo)
    assert recipe.fastest_dtype() == expected
    assert recipe.RecipeArguments().dtype == expected
    assert recipe.RecipeArguments(dtype="float32").dtype == "float32"


def test_selections_that_share_a_cache_differ_only_in_gamma(monkeypatch, tmp_path):
    """Two Stage II arms share the pool's clusters, probes and M(c) through one cache (espeak-ng's audio, and M(c)
    with it, moves a little from run to run), and each gets its own output."""
    seen = []

    def select(args):
        seen.append(args)
        cluster = {"misalignment": 1.0, "example_texts": ["a text"], "samples": 1}
        return {"clusters": [cluster], "num_clusters": 1, "selected_seconds": 1.0, "selected_utterances": 1}

    monkeypatch.setattr(recipe, "select_synthetic_speech", select)
    monkeypatch.setattr(recipe, "training_voices", lambda backend: ["en-gb"])
    arguments = recipe.RecipeArguments(dtype="float32")
    for gamma in (5.0, 0.0):
        recipe.stage2_selection(
            tmp_path, tmp_path / "pool.jsonl", tmp_path / "natural.jsonl", tmp_path / f"gamma{gamma:g}",
            arguments, gamma, cache_dir=tmp_path / "shared",
        )  # fmt: skip
    assert [args.gamma for args in seen] == [5.0, 0.0]
    assert {args.cache_dir for args in seen} == {str(tmp_path / "shared")}
    assert len({args.output_dir for args in seen}) == 2
