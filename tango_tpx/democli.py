"""``tango-tpx demo``: the whole system on one machine, end to end.

Embedded Tango database + TangoTpx server + SPIDR simulator + a live client
(:mod:`tango_tpx.device.demo`); with ``--gui`` the Taurus window on the demo device
(:mod:`tango_tpx.gui.demo`); with ``--sardana`` a Sardana Pool/MacroServer/Door running
``ct``, an ``ascan`` and ``tpx3_record`` (:mod:`tango_tpx.sardana.demo`). It sits at the edge
of the package, beside :mod:`tango_tpx.cli`, because it joins every layer.
"""

from __future__ import annotations

import argparse


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
    """Register ``demo`` on the ``tango-tpx`` sub-command parser."""
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
