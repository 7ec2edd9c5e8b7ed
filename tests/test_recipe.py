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
