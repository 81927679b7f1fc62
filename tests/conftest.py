"""Shared test fixtures: paths to the real SPIDR captures, process hygiene."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real SPIDR captures, in ../shared beside the repository (as CI provides it).
CAPTURES = REPO.parent / "shared" / "data" / "spidr-captures"
needs_captures = pytest.mark.skipif(not (CAPTURES / "out_5sec.raw").exists(),
                                    reason=f"real SPIDR captures not found in {CAPTURES}")


def wait_until(pred, timeout: float, what: str, period: float = 0.05):
    """Poll ``pred()`` until it returns something truthy (returned) or ``timeout`` s pass
    (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
