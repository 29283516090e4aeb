"""The serving process's collector settings: startup's objects frozen, young collections rare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import gc
from gateway import gc_policy
before = gc.get_freeze_count()
gc_policy.apply()
assert gc.get_threshold() == gc_policy.THRESHOLDS, gc.get_threshold()
assert gc.get_freeze_count() > before, "startup's objects are frozen"
cycle = []
cycle.append(cycle)
del cycle
assert gc.collect() >= 1, "a cycle made after startup is still collected"
print("ok")
"""


def test_apply_freezes_startup_and_raises_the_young_threshold():
    # in a child: the settings are the process's, and the suite's own stay as they are
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
