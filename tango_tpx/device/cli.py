"""Sub-commands of the Tango layer: ``serve`` and ``register``.

``tango-tpx serve INSTANCE``   run the Timepix3 device server (same as ``TangoTpx INSTANCE``);
``tango-tpx register [JSON]``  write a dsconfig JSON into the database named by TANGO_HOST;
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


def add_parser(subparsers) -> None:
    """Register ``serve`` and ``register`` on the ``tango-tpx`` sub-command parser."""
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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m tango_tpx.device.cli serve demo``) when the package CLI is absent."""
    parser = argparse.ArgumentParser(prog="tango-tpx")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
