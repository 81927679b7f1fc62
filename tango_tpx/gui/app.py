"""``tango-tpx gui [DEVICE] [--screenshot FILE.png [--after S]]``: open the Timepix3 window.

DEVICE is a Tango device name (``tpx3/detector/1``, resolved through TANGO_HOST) or a full
``tango://HOST:PORT/tpx3/detector/1``. Without it, the first Timepix3 device registered in
the database that TANGO_HOST names is used (exported ones first). With ``--screenshot`` the
window renders for S seconds of live data (it works without a display with
``QT_QPA_PLATFORM=offscreen``), saves itself as a PNG and the command exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

#: Used when the database cannot be asked (the window then shows why it cannot connect).
FALLBACK_DEVICE = "tpx3/detector/1"
DEVICE_CLASS = "Timepix3"


def default_device(tango_host: str | None = None) -> tuple[str, str]:
    """(device name, note) for the first Timepix3 device in the database of TANGO_HOST.

    The note is '' when one was found, else why :data:`FALLBACK_DEVICE` is used.
    """
    host = tango_host or os.environ.get("TANGO_HOST", "")
    if not host:
        return FALLBACK_DEVICE, "TANGO_HOST is not set"
    try:
        import tango

        h, _, p = host.partition(":")
        db = tango.Database(h, int(p or 10000))
        exported = sorted(db.get_device_exported_for_class(DEVICE_CLASS))
        if exported:
            return exported[0], ""
        for server in sorted(db.get_server_list("*")):
            for name in sorted(db.get_device_class_list(server)[0::2]):
                if db.get_class_for_device(name) == DEVICE_CLASS:
                    return name, ""
        return FALLBACK_DEVICE, f"no {DEVICE_CLASS} device registered in {host}"
    except Exception as exc:  # noqa: BLE001 - reported in the window
        from .link import error_text

        return FALLBACK_DEVICE, f"database {host} cannot be asked: {error_text(exc)}"


def display_problem(screenshot: bool) -> str | None:
    """Why no window can be shown here (None when it can).

    Without a display (no DISPLAY / WAYLAND_DISPLAY, no QT_QPA_PLATFORM) a screenshot is
    rendered offscreen (QT_QPA_PLATFORM is set to ``offscreen`` for this process); an
    interactive window cannot be opened, and the message says what to do.
    """
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        return None
    return ("no display: DISPLAY is not set. Run it on a desktop or with X forwarding (ssh -X), or "
            "render without a display with --screenshot FILE.png (QT_QPA_PLATFORM=offscreen)")


def make_app(argv: list[str] | None = None):
    """The Qt application: a TaurusApplication when Taurus is installed (same Qt underneath)."""
    from PyQt5 import QtWidgets

    app = QtWidgets.QApplication.instance()
    if app is not None:
        return app
    try:
        from taurus.qt.qtgui.application import TaurusApplication

        return TaurusApplication(list(argv or ["tango-tpx gui"]), cmd_line_parser=None,
                                 app_name="tango-tpx gui", org_name="tango-tpx")
    except ImportError:
        return QtWidgets.QApplication(list(argv or ["tango-tpx gui"]))


def run_gui(device: str | None = None, screenshot: str | None = None, after: float = 5.0,
            on_ready=None) -> int:
    """Open the window on ``device`` and run until it is closed (or the screenshot is saved).

    Returns 0, or 1 when the screenshot could not be written. ``on_ready(window)`` is called
    once the window is shown (the demo uses it).
    """
    from PyQt5 import QtCore

    from .window import TpxWindow

    app = make_app()
    note = ""
    if not device:
        device, note = default_device()
    window = TpxWindow(device).start()
    if note:
        window.statusBar().showMessage(f"{note}; trying {device}")
    result = {"code": 0}

    if screenshot:
        def shoot() -> None:
            if not window.save_screenshot(screenshot):
                print(f"tango-tpx gui: cannot write {screenshot}", file=sys.stderr)
                result["code"] = 1
            else:
                print(f"tango-tpx gui: screenshot saved to {screenshot}")
            window.close()

        QtCore.QTimer.singleShot(int(max(0.0, after) * 1000), shoot)
    # Ctrl-C / SIGTERM close the window (Qt's loop lets Python handle signals via a timer)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: window.close())
    tick = QtCore.QTimer()
    tick.timeout.connect(lambda: None)
    tick.start(200)
    if on_ready is not None:
        on_ready(window)
    app.setQuitOnLastWindowClosed(True)
    app.exec_()
    tick.stop()
    window.link.stop()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return result["code"]


def _run(args: argparse.Namespace) -> int:
    if args.after < 0:
        print("tango-tpx gui: --after must be >= 0 s", file=sys.stderr)
        return 2
    if args.screenshot and not os.path.isdir(os.path.dirname(os.path.abspath(args.screenshot))):
        print(f"tango-tpx gui: the folder of {args.screenshot} does not exist", file=sys.stderr)
        return 2
    try:
        import PyQt5.QtWidgets  # noqa: F401
        import pyqtgraph  # noqa: F401
    except ImportError as exc:
        print(f"tango-tpx gui: cannot load the Qt GUI: {exc} (pip install 'tango-tpx[gui]'; system "
              "libraries: libgl1 libglib2.0-0 libfontconfig1)", file=sys.stderr)
        return 2
    problem = display_problem(bool(args.screenshot))
    if problem:
        print(f"tango-tpx gui: {problem}", file=sys.stderr)
        return 2
    return run_gui(args.device, args.screenshot, args.after)


def add_parser(subparsers) -> None:
    """Register ``gui`` on the ``tango-tpx`` sub-command parser."""
    p = subparsers.add_parser("gui", help="Qt/Taurus window for a Timepix3 device: image, ToF, rates, controls",
                              description="Open the Timepix3 window: live hit map, ToF spectrum with the "
                                          "event window, rate trends, counters, acquisition controls "
                                          "and settings.")
    p.add_argument("device", nargs="?", default=None,
                   help="device name or tango://HOST:PORT/NAME (default: the first Timepix3 device "
                        "in the database of TANGO_HOST)")
    p.add_argument("--screenshot", metavar="FILE.png", default=None,
                   help="save the window as a PNG after --after seconds and exit (works offscreen: "
                        "QT_QPA_PLATFORM=offscreen)")
    p.add_argument("--after", type=float, default=5.0, metavar="S",
                   help="seconds of live data before the screenshot (default 5)")
    p.set_defaults(func=_run)
