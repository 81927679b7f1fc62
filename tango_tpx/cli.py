"""``tango-tpx`` command line: one sub-command per job.

Each part of the package registers its own sub-command through an ``add_parser(subparsers)``
function (``set_defaults(func=run)``, ``run(args) -> exit code``); this module only
collects them, so a part that fails to import does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: Modules that contribute sub-commands, in the order shown by ``--help``.
_COMMAND_MODULES = (
    "tango_tpx.simulator.cli",    # simulate
    "tango_tpx.io.cli",           # convert
    "tango_tpx.device.cli",       # serve, register
    "tango_tpx.democli",          # demo
    "tango_tpx.trainid.cli",      # trainid-sim
    "tango_tpx.gui.app",          # gui
    "tango_tpx.sardana.cli",      # sardana-setup
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tango-tpx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tango-tpx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # part not installed in this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
