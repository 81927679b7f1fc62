"""``tango-tpx sardana-setup``: Sardana Pool, MacroServer, Door and the Timepix3 controllers.

Writes into the database that TANGO_HOST names (starting a temporary ``Sardana`` server
for the Pool commands when none runs). Safe to run again: nothing is created twice.
"""

from __future__ import annotations

import argparse
import os
import sys

from tango_tpx.sardana import DEFAULT_DEVICE, DEFAULT_INSTANCE


def _run(args: argparse.Namespace) -> int:
    tango_host = os.environ.get("TANGO_HOST")
    if not tango_host or ":" not in tango_host:
        print("tango-tpx sardana-setup: TANGO_HOST is not set (HOST:PORT of the Tango database)",
              file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print(f"tango-tpx sardana-setup: --timeout must be > 0 s, got {args.timeout}", file=sys.stderr)
        return 2
    import tango

    from tango_tpx.sardana.configure import SardanaNames, sardana_setup

    try:
        changes = sardana_setup(tango_host, instance=args.instance, device=args.device,
                                timeout_s=args.timeout, scan_dir=args.scan_dir, env_db=args.env_db)
    except tango.DevFailed as exc:
        print(f"tango-tpx sardana-setup: {exc.args[0].desc.strip()}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"tango-tpx sardana-setup: {exc}", file=sys.stderr)
        return 1
    names = SardanaNames(args.instance)
    if not changes:
        print(f"sardana-setup: everything already in place in {tango_host} (Sardana/{args.instance})")
    print(f"sardana-setup: start the server with `Sardana {args.instance}`, then "
          f"`spock --profile={args.instance}` (door {names.door})")
    return 0


def add_parser(subparsers) -> None:
    """Register ``sardana-setup`` on the ``tango-tpx`` sub-command parser."""
    p = subparsers.add_parser(
        "sardana-setup", help="Sardana Pool/MacroServer/Door + Timepix3 controllers, macros, measurement group",
        description="Register the Sardana server (Pool, MacroServer, Door) with the Timepix3 controllers "
                    "(PoolPath) and macros (MacroPath) in the Tango database named by TANGO_HOST, create "
                    "the controllers, their channels, a measurement group tpx3_mg and a dummy motor mot01. "
                    "Idempotent.")
    p.add_argument("--instance", default=DEFAULT_INSTANCE, help=f"Sardana server instance (default {DEFAULT_INSTANCE})")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"Timepix3 device (default {DEFAULT_DEVICE})")
    p.add_argument("--timeout", type=float, default=3.0, help="controllers' client timeout, s (default 3)")
    p.add_argument("--scan-dir", default=None, help="ScanDir for the scan files (ScanFile tpx3_scans.h5)")
    p.add_argument("--env-db", default=None, help="MacroServer EnvironmentDb file (default: Sardana's)")
    p.set_defaults(func=_run)
