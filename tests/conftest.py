"""Shared test fixtures: paths to the real SPIDR captures, process hygiene."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real SPIDR captures, in ../shared beside the repository (as CI provides it).
CAPTURES = REPO.parent / "shared" / "data" / "spidr-captures"
needs_captures = pytest.mark.skipif(not (CAPTURES / "out_5sec.raw").exists(),
                                    reason=f"real SPIDR captures not found in {CAPTURES}")


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, period: float = 0.02) -> Any:
    """Poll ``cond()`` every ``period`` s until it returns something truthy or ``timeout`` s
    pass; returns its last value (for ``assert wait_for(...)``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(period)
    return cond()


def wait_until(pred: Callable[[], Any], timeout: float, what: str, period: float = 0.05) -> Any:
    """:func:`wait_for` that raises AssertionError naming ``what`` when ``timeout`` s pass."""
    v = wait_for(pred, timeout, period)
    if not v:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return v
