"""Sub-commands of the Tango layer: ``serve``, ``register`` and ``demo``.

``tango-tpx serve INSTANCE``   run the Timepix3 device server (same as ``TangoTpx INSTANCE``);
``tango-tpx register [JSON]``  write a dsconfig JSON into the database named by TANGO_HOST;
``tango-tpx demo``             embedded DB + server + simulator + a live client, end to end.
"""

from __future__ import annotations

import argparse
import os
import sys


def _run_serve(args: argparse.Namespace) -> int:
    from tango_tpx.device.server import main

    return main([args.instance, *args.tango_args])


def _run_register(args: argparse.Namespace) -> int:
    from tango_tpx.device.database import DEFAULT_CONFIG, register_config

    if not os.environ.get("TANGO_HOST"):
        print("tango-tpx register: TANGO_HOST is not set (HOST:PORT of the Tango database)", file=sys.stderr)
        return 2
    source = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        import tango

        names = register_config(source)
    except ValueError as exc:
        print(f"tango-tpx register: {exc}", file=sys.stderr)
        return 2
    except tango.DevFailed as exc:
        print(f"tango-tpx register: database {os.environ['TANGO_HOST']} refused: {exc.args[0].desc}",
              file=sys.stderr)
        return 1
    for name in names:
        print(f"registered {name} from {source or 'the built-in default'} in {os.environ['TANGO_HOST']}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    if args.gui:
        from tango_tpx.gui.demo import run_gui_demo

        return run_gui_demo(rate_mhits=args.rate, centroid_processes=args.processes, seed=args.seed,
                            workdir=args.workdir, screenshot=args.screenshot, after=args.after)
    if args.sardana:
        from tango_tpx.sardana.demo import run_sardana_demo

        return run_sardana_demo(rate_mhits=args.rate, workdir=args.workdir, seed=args.seed)
    from tango_tpx.device.demo import run_demo

    return run_demo(duration=args.duration, rate_mhits=args.rate, keep=args.keep, workdir=args.workdir,
                    centroid_processes=args.processes, seed=args.seed, trainid=args.trainid)


def add_parser(subparsers) -> None:
    """Register ``serve``, ``register`` and ``demo`` on the ``tango-tpx`` sub-command parser."""
    p = subparsers.add_parser("serve", help="run the Timepix3 Tango device server (TangoTpx INSTANCE)",
                              description="Run the Timepix3 Tango device server registered as "
                                          "TangoTpx/INSTANCE in the database named by TANGO_HOST.")
    p.add_argument("instance", help="server instance name, e.g. demo")
    p.add_argument("tango_args", nargs=argparse.REMAINDER, help="further arguments for Tango (e.g. -v4)")
    p.set_defaults(func=_run_serve)

    p = subparsers.add_parser("register", help="write a dsconfig JSON into the Tango database (TANGO_HOST)",
                              description="Register servers, devices and properties of a dsconfig JSON "
                                          "file in the Tango database named by TANGO_HOST.")
    p.add_argument("config", nargs="?", default=None,
                   help="dsconfig JSON (default: dserver_config/tango_tpx.json)")
    p.set_defaults(func=_run_register)

    p = subparsers.add_parser("demo", help="simulated detector + embedded Tango DB + TangoTpx server, live",
                              description="Start an embedded Tango database and the TangoTpx server, "
                                          "stream simulated SPIDR data over UDP, record it through the "
                                          "device, print live rates, convert the recording to HDF5.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of simulated data (default 10)")
    p.add_argument("--rate", type=float, default=0.5, help="simulated hit rate, Mhits/s (default 0.5)")
    p.add_argument("--processes", type=int, default=1, help="centroiding processes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p.add_argument("--workdir", default=None,
                   help="directory for the recording, HDF5 and logs (default: a new temporary one)")
    p.add_argument("--trainid", action="store_true",
                   help="also simulate a European XFEL train-ID receiver (10 Hz, pty) as TrainIdSource")
    p.add_argument("--keep", action="store_true",
                   help="leave the database and server running and print TANGO_HOST (for a Taurus GUI)")
    p.add_argument("--gui", action="store_true",
                   help="open the Timepix3 window (tango-tpx gui) on the demo device, data until it is closed")
    p.add_argument("--screenshot", metavar="FILE.png", default=None,
                   help="with --gui: save the window after --after seconds and end the demo")
    p.add_argument("--after", type=float, default=5.0, metavar="S", help="with --screenshot: seconds (default 5)")
    p.add_argument("--sardana", action="store_true",
                   help="instead: Sardana (Pool, MacroServer, Door) runs ct, an ascan and tpx3_record")
    p.set_defaults(func=_run_demo)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m tango_tpx.device.cli demo``) when the package CLI is absent."""
    parser = argparse.ArgumentParser(prog="tango-tpx")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
