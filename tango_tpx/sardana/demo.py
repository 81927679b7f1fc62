"""``tango-tpx demo --sardana``: scans with the Timepix3 through a real Pool, MacroServer and Door.

Starts :class:`tango_tpx.sardana.system.SardanaSystem` (embedded DB, TangoTpx server,
simulator, Sardana with the ``sardana-setup`` configuration), then runs on the Door, as a
beamline user would in spock:

* ``ct 0.5``;
* ``ascan mot01 0 1 4 0.5`` with the measurement group ``tpx3_mg`` (Timepix3 channels);
* ``tpx3_record 1``;

and prints each macro's output (the scan table), the NXscan file and the per-point file
references stored in it (each checked to exist). Everything is stopped at the end and on
Ctrl-C / SIGTERM; the working directory (data, scans, logs) is kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from tango_tpx.sardana import IMAGE_CHANNEL

#: The macros the demo runs, in order.
DEMO_MACROS = ("ct 0.5", "ascan mot01 0 1 4 0.5", "tpx3_record 1")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that the clean-up runs."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise _Terminated()


def scan_references(scan_file: str | os.PathLike, channel: str = IMAGE_CHANNEL,
                    entry: str | None = None) -> tuple[str, list[str]]:
    """``(entry name, references)`` of ``channel`` in an NXscan file (default: its last entry).

    ``h5file://`` references that the recorder turned into a virtual dataset are returned as
    ``h5file://<source file>::<source dataset>`` from the virtual dataset's layout.
    """
    import h5py

    with h5py.File(scan_file, "r") as f:
        if entry is None:
            entries = sorted((k for k in f if k.startswith("entry")), key=lambda k: int(k[5:] or 0))
            if not entries:
                raise ValueError(f"{scan_file} holds no scan entry")
            entry = entries[-1]
        ds = f[f"{entry}/measurement/{channel}"]
        if ds.is_virtual:
            return entry, [f"h5file://{os.path.normpath(vs.file_name)}::{vs.dset_name}"
                           for vs in ds.virtual_sources()]
        return entry, [r.decode() if isinstance(r, bytes) else str(r) for r in ds[()]]


def reference_path(reference: str) -> Path:
    """The file a ``file://`` or ``h5file://...::dataset`` reference names."""
    rest = reference.split("://", 1)[-1]
    return Path(rest.split("::", 1)[0])


def run_sardana_demo(rate_mhits: float = 0.2, workdir: str | os.PathLike | None = None, seed: int = 0,
                     out: IO[str] | None = None) -> int:
    """Run the Sardana demo; returns 0 when every macro worked and every reference exists,
    1 when a step failed, 130 when interrupted."""
    from tango_tpx.sardana.system import SardanaSystem

    out = out or sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    if not rate_mhits > 0:
        say("demo: --rate must be > 0")
        return 2
    previous_term = (signal.signal(signal.SIGTERM, _on_sigterm)
                     if threading.current_thread() is threading.main_thread() else None)
    system = SardanaSystem(workdir, rate_mhits=rate_mhits, seed=seed, say=lambda m: say(f"demo: {m}"))
    say(f"demo: working directory {system.workdir}")
    code = 1
    try:
        t0 = time.monotonic()
        system.start()
        say(f"demo: everything up in {time.monotonic() - t0:.1f} s; macros on {system.names.door}")
        ok = True
        for command in DEMO_MACROS:
            say(f"\nDoor_demo_1 [{command}]")
            result = system.door.run(command, timeout=300.0)
            for line in result.output:
                say(line)
            for line in result.errors:
                say(f"ERROR: {line}")
            say(f"demo: {command!r} took {result.seconds:.1f} s, door {result.state}")
            ok = ok and result.ok
        ok = _report_scan(system, say) and ok
        code = 0 if ok else 1
        say("demo: done" if ok else "demo: FAILED (see above and the logs in the working directory)")
    except KeyboardInterrupt:
        say("demo: interrupted, stopping everything")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the demo reports and cleans up
        say(f"demo: FAILED: {type(exc).__name__}: {exc}")
        for log in ("sardana.log", "tangotpx.log"):
            tail = system.log_tail(log, 15)
            if tail:
                say(f"--- last lines of {log} ---\n{tail}")
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        system.close()
        say(f"demo: Sardana, simulator, TangoTpx server and database stopped; files in {system.workdir}")
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
    return code


def _report_scan(system: Any, say) -> bool:
    """Print the NXscan file and the per-point references of the last scan; True when all exist."""
    scan_file = system.scan_dir / "tpx3_scans.h5"
    if not scan_file.exists():
        say(f"demo: no scan file {scan_file}")
        return False
    entry, refs = scan_references(scan_file)
    say(f"\ndemo: NXscan file {scan_file} ({entry}), {IMAGE_CHANNEL} references:")
    ok = bool(refs)
    for i, ref in enumerate(refs):
        path = reference_path(ref)
        exists = path.exists()
        ok = ok and exists
        size = f"{path.stat().st_size} bytes" if exists else "MISSING"
        say(f"  point {i}: {ref} ({size})")
    return ok
