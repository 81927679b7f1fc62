"""``TangoTpx INSTANCE``: run the Timepix3 Tango device server.

The server registers in the Tango database named by ``TANGO_HOST`` as ``TangoTpx/INSTANCE``
(see ``tango-tpx register`` and ``dserver_config/tango_tpx.json``). Extra arguments are
passed to Tango (for example ``-v4`` for verbose logging, or ``-nodb -port 10000
-dlist tpx3/detector/1`` to run without a database).
"""

from __future__ import annotations

import sys

#: Tango server (executable) name: devices are registered under ``TangoTpx/<instance>``.
SERVER_NAME = "TangoTpx"


def main(argv: list[str] | None = None) -> int:
    """Run the device server until it is stopped (SIGINT/SIGTERM shut it down cleanly)."""
    from tango.server import run

    from tango_tpx.device.timepix3 import Timepix3

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") and args[0] not in ("-?",):
        print(f"usage: {SERVER_NAME} INSTANCE [tango options]   (e.g. {SERVER_NAME} demo)", file=sys.stderr)
        return 2
    run((Timepix3,), args=[SERVER_NAME, *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
