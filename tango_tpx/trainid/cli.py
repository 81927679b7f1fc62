"""Sub-commands ``tango-tpx trainid-sim`` (simulated receiver on a pty) and
``tango-tpx trainid-read`` (print frames from a receiver).

Example::

    tango-tpx trainid-sim --rate 10 --bad-crc-every 50 &      # prints the port path
    tango-tpx trainid-read /tmp/tpx-trainid-XXXX/ttyTRAINID --duration 5
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time


def add_parser(subparsers) -> None:
    """Register ``trainid-sim`` and ``trainid-read`` on an argparse sub-parsers object."""
    p = subparsers.add_parser("trainid-sim", help="simulated XFEL train-ID receiver on a pty",
                              description="Write train-ID frames to a pty and print its path.")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second (default 10)")
    p.add_argument("--start-train-id", type=int, default=1_000_000_000)
    p.add_argument("--beam-mode", type=lambda s: int(s, 0), default=1, help="32-bit word (0x.. ok)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--bad-crc-every", type=int, default=0)
    p.add_argument("--garbage-every", type=int, default=0)
    p.add_argument("--repeat-every", type=int, default=0)
    p.add_argument("--split-writes", action="store_true", help="write each frame in 3 pieces")
    p.add_argument("--unplug-every", type=float, default=0.0,
                   help="unplug for 1 s every this many seconds (0: never)")
    p.set_defaults(func=run_sim)

    r = subparsers.add_parser("trainid-read", help="print train IDs read from a receiver",
                              description="Read a train-ID receiver and print frames and counters.")
    r.add_argument("source", nargs="?", default="/dev/ttyUSB0",
                   help="tty/pty path, 'usb' or 'usb:VID:PID' (default /dev/ttyUSB0)")
    r.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    r.add_argument("--zmq", default=None, help="also publish on this ZMQ PUB address")
    r.set_defaults(func=run_read)


def _wait(duration: float, stop: threading.Event) -> None:
    """Wait ``duration`` s (0: forever) or until Ctrl-C / SIGTERM."""
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(duration if duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_sim(args: argparse.Namespace) -> int:
    from .receiver import SimFaults, SimulatedReceiver
    faults = SimFaults(bad_crc_every=args.bad_crc_every, garbage_every=args.garbage_every,
                       repeat_every=args.repeat_every, split_writes=args.split_writes)
    sim = SimulatedReceiver(rate_hz=args.rate, start_train_id=args.start_train_id,
                            beam_mode=args.beam_mode, faults=faults)
    stop = threading.Event()
    sim.start()
    print(sim.path, flush=True)
    unplugger = None
    if args.unplug_every > 0:
        def cycle() -> None:
            while not stop.wait(args.unplug_every):
                sim.unplug()
                if stop.wait(1.0):
                    break
                sim.replug()
        unplugger = threading.Thread(target=cycle, daemon=True)
        unplugger.start()
    try:
        _wait(args.duration, stop)
    finally:
        stop.set()
        if unplugger is not None:
            unplugger.join(2.0)
        sim.stop()
    c = sim.counts
    print(f"sent {len(c.sent_ids)} frames ({c.ticks} trains, {c.bad_crc} bad CRC, "
          f"{c.garbage_bytes} garbage bytes, {c.unplugged_ticks} while unplugged)", file=sys.stderr)
    return 0


def run_read(args: argparse.Namespace) -> int:
    from .receiver import TrainIdReader

    def show(frames) -> None:
        for f in frames:
            print(f"{f.host_time_ns} {f.train_id} 0x{f.beam_mode:08X}", flush=True)

    try:
        reader = TrainIdReader(args.source, callback=show, zmq_address=args.zmq)
    except (OSError, ValueError, TypeError) as exc:
        print(f"trainid-read: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    reader.start()
    t0 = time.monotonic()
    try:
        _wait(args.duration, stop)
    finally:
        reader.stop()
    c = reader.counters()
    print(f"{reader.status}; {c['frames']} frames in {time.monotonic() - t0:.1f} s, "
          f"{c['crc_errors']} CRC errors, {c['missed_trains']} missed, "
          f"{c['reconnects']} reconnects", file=sys.stderr)
    return 0
