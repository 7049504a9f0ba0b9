"""Soak tests: long, so marked `slow` and left out of the default run (and CI).

Run them with `make test PYTEST_ARGS="-m slow"` (or `.venv/bin/pytest -m slow`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)
def test_soak_200_reloads_under_load_loses_nothing() -> None:
    """upgrade T18, shortened: 200 reloads (every 25th a keeper re-exec) two a second under
    keep-alive HTTP, connect-per-request HTTP and TCP echo load, two workers per generation.
    The script fails on any client error, failed reload, zombie, or fd/RSS drift over 2 %."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak-upgrade"), "--upgrades", "200", "--interval", "0.5", "--reexec-every", "25", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "PASS" in result.stdout, result.stdout[-4000:]
