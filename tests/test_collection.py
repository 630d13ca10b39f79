"""pytest-xdist runs the suite on two workers that must collect the same tests in the same order.

Parametrizing from a set of strings breaks that: the order depends on PYTHONHASHSEED, which differs
per process (a fresh-clone CI run failed with "Different tests were collected between gw1 and gw0").
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collected(hash_seed: int) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "tests"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_collection_order_does_not_depend_on_the_hash_seed():
    # seeds 1 and 3 iterate a two-string set such as {"relu2", "swiglu"} in opposite orders
    first, second = collected(1), collected(3)
    assert len(first) > 100
    assert first == second, next(f"{a} != {b}" for a, b in zip(first, second) if a != b)
