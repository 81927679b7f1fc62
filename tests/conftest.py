"""Shared test fixtures: paths to the real SPIDR captures, process hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real SPIDR captures, in ../shared beside the repository (as CI provides it).
CAPTURES = REPO.parent / "shared" / "data" / "spidr-captures"
needs_captures = pytest.mark.skipif(not (CAPTURES / "out_5sec.raw").exists(),
                                    reason=f"real SPIDR captures not found in {CAPTURES}")
