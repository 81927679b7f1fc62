"""Decode benchmark: numba decoder vs. the plain-numpy vectorised decoder, same words, same run.

Usage: ``python benchmarks/decode.py [--mwords 50] [--chunk-words 1048576] [--repeat 3]``

Simulator data (seeded), decoded on one core.  Prints Mhits/s (pixel hits per second) of
each decoder and the ratio; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:      # this checkout's library, not another installed one
    sys.path.insert(0, str(REPO))


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mwords", type=float, default=50.0, help="million words to decode (>= 50 for the report)")
    ap.add_argument("--chunk-words", type=int, default=1 << 20, help="words per decode call (streaming)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from tango_tpx.simulator import SimConfig, simulate
    from tango_tpx.tpx3.codec import Decoder, warm_up
    from tango_tpx.tpx3.reference import decode_numpy

    target = int(args.mwords * 1e6)
    rate = 40.0  # Mhits/s of the simulated detector: a fully loaded chip
    t0 = time.perf_counter()
    words, _ = simulate(SimConfig(rate_mhits=rate, duration_s=target / (rate * 1e6) * 1.02, seed=args.seed,
                                  trigger_hz=10_000.0))
    words = words[:target] if len(words) >= target else words
    gen_s = time.perf_counter() - t0
    n_words = len(words)
    print(f"generated {n_words / 1e6:.1f} M words ({n_words * 8 / 1e9:.2f} GB) in {gen_s:.1f} s")

    warm_up()
    n_hits = None

    def run_numba() -> None:
        nonlocal n_hits
        dec = Decoder()
        n = 0
        for i in range(0, n_words, args.chunk_words):
            n += len(dec.decode(words[i:i + args.chunk_words]).pixels)
        n_hits = n

    def run_numba_whole() -> None:
        Decoder().decode(words)

    t_numba = _best(run_numba, args.repeat)
    t_whole = _best(run_numba_whole, args.repeat)
    assert n_hits is not None
    t_numpy = _best(lambda: decode_numpy(words), max(1, args.repeat - 1))

    mh = n_hits / t_numba / 1e6
    mh_whole = n_hits / t_whole / 1e6
    mh_np = n_hits / t_numpy / 1e6
    print(f"hits: {n_hits / 1e6:.1f} M of {n_words / 1e6:.1f} M words")
    print(f"numba decoder, {args.chunk_words}-word chunks: {mh:8.1f} Mhits/s ({n_words / t_numba / 1e6:.1f} Mwords/s)")
    print(f"numba decoder, one call:                {mh_whole:8.1f} Mhits/s")
    print(f"numpy vectorised baseline:              {mh_np:8.1f} Mhits/s")
    print(f"ratio numba / numpy:                    {mh / mh_np:8.1f} x")
    result = {"benchmark": "decode", "words": n_words, "hits": n_hits,
              "mhits_per_s": round(mh, 1), "mhits_per_s_one_call": round(mh_whole, 1),
              "mwords_per_s": round(n_words / t_numba / 1e6, 1),
              "baseline": "numpy vectorised (pymepix style)", "baseline_mhits_per_s": round(mh_np, 1),
              "ratio": round(mh / mh_np, 2), "chunk_words": args.chunk_words, "cores": 1}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
