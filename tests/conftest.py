"""Shared fixtures: the real data beside the repository (../shared/data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# OpenMP threads that spin while waiting make torch many times slower when a 2-core machine is also
# decoding images in DataLoader workers; passive waiting costs nothing measurable when it is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402  (after the environment is set)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read the real data from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dagm_class1_test(shared_data) -> Path:
    return shared_data / "dagm" / "Class1" / "Test"


@pytest.fixture(scope="session")
def tiny_imagenet(shared_data) -> Path:
    return shared_data / "tiny-imagenet-200-subset"


def run_example(script: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    """Run an ``examples/`` script as a user would (a fresh interpreter), OpenMP waiting passively."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
