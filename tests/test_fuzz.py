"""Fuzzing (issue 15): a few hundred derandomized random inputs to the processor, its chat template and both
pipelines are each handled with finite logits or refused with salad's own `ValueError` (`tests/fuzzing.py`).
`benchmarks/fuzz.py --cases 10000` runs the same harness longer."""

from __future__ import annotations

import pytest
from fuzzing import Targets, cases, run_case
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return Targets.tiny(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(case=cases())
def test_every_input_is_handled_or_refused_by_salad(targets, case):
    run_case(targets, case)
