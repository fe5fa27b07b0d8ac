"""What makes a run of the suite the same run every time: the seed, Hypothesis' profiles, timings.

- Every random choice a test makes comes from :func:`rng_for`, seeded by ``KATA_TEST_SEED``
  (fixed by default) and the test's own id, so one test's draws do not depend on which others ran
  before it on the same worker; external system ids come from :func:`fixed_uuid`. A failing test's
  report names the seed that reproduces it.
- Hypothesis runs the ``ci`` profile unless ``HYPOTHESIS_PROFILE`` (or ``--hypothesis-profile``)
  names another: derandomized (the examples follow from each test's name), a bounded number of
  examples, no example database. ``dev`` tries many more examples at random, for exploring.
- A loop that repeats one case at varied moments (fifty kills, fifty stops) makes :func:`rounds`
  of its rounds: all of them unless ``KATA_TEST_ROUNDS`` names a share. CI runs the suite on its
  extra interpreters with a fifth: each case still runs there, on that interpreter's code paths;
  the many moments are the default interpreter's job, where the share is always 1.
- Where a duration is the behaviour under test (a stop within rsyslog's 200 ms), it is measured by
  :func:`median_of_runs` over several runs, never asserted from one run: one run on a loaded
  machine says little, a median says what the code does.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import uuid
from typing import Callable, Dict, Iterator

from hypothesis import HealthCheck, settings

#: The suite's seed unless KATA_TEST_SEED names another.
DEFAULT_SEED = 20261207
SEED = int(os.environ.get("KATA_TEST_SEED") or DEFAULT_SEED)

#: How many examples a property gets under each profile; a test that needs fewer (each example
#: starts processes) says so in its own @settings.
CI_EXAMPLES = 100
DEV_EXAMPLES = 2000

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=CI_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=DEV_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
#: ``ci`` with a fifth of the examples, for the extra interpreters' runs in CI (as with `rounds`).
settings.register_profile("ci-short", parent=settings.get_profile("ci"), max_examples=CI_EXAMPLES // 5)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "ci"
settings.load_profile(PROFILE)


def rng_for(test_id: str) -> random.Random:
    """The random source of one test: the suite's seed and the test's id, the same on every run."""
    return random.Random(f"{SEED}:{test_id}")


_uuid_counters: Dict[str, Iterator[int]] = {}


def fixed_uuid() -> str:
    """A UUID (an external system id) that is the same on every run: the n-th one the running test
    asks for, under the suite's seed."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    n = next(_uuid_counters.setdefault(test, itertools.count()))
    return str(uuid.UUID(int=rng_for(f"{test}#{n}").getrandbits(128), version=4))


def median_of_runs(measure: Callable[[], float], runs: int = 5) -> float:
    """The median of ``runs`` durations that ``measure()`` times, for durations that are behaviour."""
    return statistics.median(measure() for _ in range(runs))


#: The share of a repeated case's rounds this run makes (``KATA_TEST_ROUNDS``; 1: all of them).
ROUNDS_SHARE = float(os.environ.get("KATA_TEST_ROUNDS") or 1)


def rounds(full: int, step: int = 1) -> int:
    """How many of a loop's ``full`` rounds to make: all, or ``KATA_TEST_ROUNDS``' share of them,
    at least two and a multiple of ``step`` (a loop that cycles through ``step`` cases keeps each)."""
    return max(2, step, round(full * ROUNDS_SHARE / step) * step)
