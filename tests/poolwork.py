"""Task functions for the worker-pool tests (importable by a fresh worker interpreter)."""

from __future__ import annotations

import os
import time

import numpy as np


def scale_worker(init: dict):
    """fn(inputs, meta, alloc): ``x * k`` written into the slot, its running sum as a fresh
    array, the task's metadata, the sum and the worker's pid as the small result."""
    k = init["k"]

    def run(inputs: dict, meta, alloc):
        x = inputs["x"]
        if meta == "slow":
            time.sleep(30)
        if meta == "fail":
            raise ValueError("task asked to fail")
        y = alloc("y", np.float64, x.size) if alloc is not None else np.empty(x.size, np.float64)
        np.multiply(x, k, out=y)
        return {"y": y, "cum": np.cumsum(inputs["n"])}, (meta, float(y.sum()), os.getpid())

    return run


def broken_worker(init):
    raise RuntimeError("cannot build the task function")
