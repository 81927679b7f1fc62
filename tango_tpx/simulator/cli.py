"""``tango-tpx simulate``: run the SPIDR simulator to a UDP port or a .raw/.tpx3 file."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .spidr import SimConfig, SpidrSimulator


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``simulate`` sub-command."""
    p = subparsers.add_parser(
        "simulate", help="simulated SPIDR stream to UDP or a file",
        description="Simulate a Timepix3/SPIDR detector (deterministic from --seed) and send the stream "
                    "over UDP (paced to the hit rate) or write it to a .raw (pymepix) or .tpx3 (ASI) file.")
    p.add_argument("--rate", type=float, required=True, metavar="MHITS_PER_S", help="hit rate incl. noise, Mhits/s")
    p.add_argument("--duration", type=float, required=True, metavar="S", help="simulated seconds")
    p.add_argument("--seed", type=int, required=True, metavar="N")
    p.add_argument("--trigger-hz", type=float, default=1000.0, metavar="F", help="TDC1 trigger rate (default 1000)")
    p.add_argument("--quad", action="store_true", help="2x2 chips (.tpx3 framing; needs a .tpx3 output or UDP)")
    p.add_argument("--tdc2", action="store_true", help="also emit TDC2 edges")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--udp", type=_host_port, metavar="HOST:PORT", help="send datagrams to HOST:PORT")
    out.add_argument("--output", metavar="FILE.raw|FILE.tpx3", help="write a file (must not exist)")
    p.add_argument("--truth", metavar="FILE.npz", help="also save the ground truth (.npz)")
    p.add_argument("--payload-bytes", type=int, default=8192, metavar="B", help="datagram / chunk size (default 8192)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the simulation; prints a summary; returns the exit code (0 ok, 1 error, 130 stopped)."""
    try:
        cfg = SimConfig(rate_mhits=args.rate, duration_s=args.duration, seed=args.seed, trigger_hz=args.trigger_hz,
                        quad=args.quad, tdc2=args.tdc2, payload_bytes=args.payload_bytes)
        sim = SpidrSimulator(cfg)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    try:
        if args.output:
            res = sim.write_file(args.output, truth_path=args.truth)
            where = args.output
            seconds = None
        else:
            stop = threading.Event()
            old = None
            if threading.current_thread() is threading.main_thread():
                old = signal.signal(signal.SIGINT, lambda *_: stop.set())
            try:
                res = sim.send_udp(args.udp[0], args.udp[1], payload_bytes=args.payload_bytes, stop_event=stop,
                                   truth_path=args.truth)
            finally:
                if old is not None:
                    signal.signal(signal.SIGINT, old)
            where = f"udp://{args.udp[0]}:{args.udp[1]} ({res['datagrams']} datagrams)"
            seconds = res["seconds"]
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    s = sim.stats
    achieved = s["hits"] / cfg.duration_s / 1e6
    line = (f"simulate: {s['hits']} hits ({s['noise_hits']} noise, {s['particles']} particles, "
            f"{s['dropped_particles']} dropped for lack of room), {s['triggers']} triggers, {res['bytes']} bytes "
            f"-> {where}; rate {achieved:.3f} Mhits/s of detector time (asked {cfg.rate_mhits:g})")
    if seconds:
        line += f"; sent in {seconds:.2f} s ({s['hits'] / seconds / 1e6:.3f} Mhits/s wall)"
    print(line)
    if args.udp and res.get("stopped"):
        return 130
    return 0
