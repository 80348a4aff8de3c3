"""The fuzz suite: hostile models, graphs, images, Broden folders and parameters through the CLI.

Every case must exit 0, or 2 with exactly one line on stderr; never hang, crash, print a
traceback or write outside its ``--out``/``--store`` (see ``fuzz_harness``). Cases come from
``fuzz_cases``: hypothesis draws the seeds (derandomized, so a run is repeatable), each seed
makes one case, and a family's cases run two at a time in forked children.

``PYANALYZER_FUZZ_EXAMPLES=N`` runs N cases per family instead of the default (CI) numbers;
``PYANALYZER_FUZZ_LOG=FILE`` appends every outcome to FILE as JSON lines (``python
tests/fuzz_report.py FILE`` summarises them).
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from fuzz_cases import FAMILIES
from fuzz_harness import Runner, write_log
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# Cases per family in the default run (about two minutes on two cores).
DEFAULT_EXAMPLES = {"models": 40, "graphs": 25, "images": 25, "broden": 25, "params": 50}


def _examples(family: str) -> int:
    env = os.environ.get("PYANALYZER_FUZZ_EXAMPLES")
    return int(env) if env else DEFAULT_EXAMPLES[family]


@pytest.fixture(scope="module")
def runner():
    with Runner() as r:
        yield r


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_case_escapes(family, runner):
    n = _examples(family)

    @settings(
        max_examples=1, derandomize=True, deadline=None, database=None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n, unique=True))
    def check(seeds: list[int]) -> None:
        cases = [
            dataclasses.replace(FAMILIES[family](random.Random(seed)), seed=seed) for seed in seeds
        ]
        outcomes = runner.run(cases)
        log = os.environ.get("PYANALYZER_FUZZ_LOG")
        if log:
            write_log(outcomes, log)
        escapes = [o.describe() for o in outcomes if o.escape]
        assert not escapes, f"{len(escapes)} of {n} {family} cases escaped:\n" + "\n".join(escapes)
        assert len(outcomes) == n

    check()
