"""pymepix's ``RawFileSampler``: convert a recorded raw file to HDF5 (same name and parameters).

The work is done by :func:`tango_tpx.io.convert.convert_file` (streaming, bounded memory,
``number_of_processes`` centroiding workers, atomic output); this class keeps pymepix's
constructor, :meth:`run` and :meth:`saveToHDF5` so existing scripts keep working.

Differences from pymepix, on purpose:
* ``dbscan_clustering=True`` (pymepix's default, kept) selects pymepix's DBSCAN; pass
  ``False`` for the fast connected-components clustering (~100x faster).
* Time-walk files are ``.npy`` tables in **ns** per ToT bin (pymepix scaled its table by 1e3).
* Files with and without the 8-byte header and ASI ``.tpx3`` files are accepted.
* Like pymepix, an existing output file is replaced (pass ``force=False`` to refuse); unlike
  pymepix, it is replaced only once the new file is complete.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import numpy as np

#: keyword arguments passed on to :func:`tango_tpx.io.convert.convert_file`
_CONVERT_KWARGS = {"event_window", "tot_threshold", "layout", "force", "compression", "chunk_words",
                   "batch_hits", "centroiding", "status_callback"}


class RawFileSampler:
    """Convert ``file_name`` (pymepix .raw or ASI .tpx3) to the HDF5 file ``output_file``.

    number_of_processes: worker processes for events + clustering (``None``: the CPU count, at
    most 8); the output is identical for any value. timewalk_file / cent_timewalk_file: ``.npy`` time-walk tables
    (ns per ToT bin). progress_callback(fraction 0..1) is called as the file is read.
    clustering_args: pymepix keys (``epsilon``, ``min_samples``, ``tot_threshold``, ...).
    dbscan_clustering: True = pymepix's DBSCAN, False = fast connected components.
    kwargs: ``event_window`` (s, default (0, inf)), ``tot_threshold``, ``layout``, ``force``
    (default True, pymepix replaced outputs), ``compression``, ``chunk_words``, ``centroiding``.
    """

    def __init__(self, file_name, output_file, number_of_processes=None, timewalk_file=None,
                 cent_timewalk_file=None, progress_callback: Callable[[float], Any] | None = None,
                 clustering_args={}, dbscan_clustering=True, **kwargs):  # noqa: B006 (pymepix signature)
        self._filename = os.fspath(file_name)
        self._output_file = os.fspath(output_file)
        self.timewalk_file = timewalk_file
        self.cent_timewalk_file = cent_timewalk_file
        if number_of_processes is None:
            number_of_processes = min(os.cpu_count() or 1, 8)
        self._number_of_processes = int(number_of_processes)
        self._progress_callback = progress_callback
        self._clustering_args = dict(clustering_args or {})
        self._dbscan_clustering = bool(dbscan_clustering)
        unknown = set(kwargs) - _CONVERT_KWARGS
        if unknown:
            warnings.warn(f"RawFileSampler: ignoring unknown arguments {sorted(unknown)}", stacklevel=2)
        self._kwargs = {k: v for k, v in kwargs.items() if k in _CONVERT_KWARGS}
        self._kwargs.setdefault("force", True)
        self.result = None

    def run(self):
        """Convert the whole file; returns the :class:`~tango_tpx.io.convert.ConvertResult`."""
        from tango_tpx.io.convert import convert_file

        self.result = convert_file(
            self._filename, self._output_file,
            number_of_processes=self._number_of_processes,
            dbscan=self._dbscan_clustering,
            timewalk_file=self.timewalk_file,
            cent_timewalk_file=self.cent_timewalk_file,
            clustering_args=self._clustering_args,
            progress_callback=self._progress_callback,
            **self._kwargs,
        )
        return self.result

    def _header_time_ns(self) -> int | None:
        """The input's header wall clock (ns since the epoch), or None (no header / no file)."""
        try:
            from tango_tpx.tpx3.files import inspect_file
            return inspect_file(self._filename).header_time_ns
        except (OSError, ValueError):
            return None

    def saveToHDF5(self, output_file, raw, clusters, timeStamps, trigger1, trigger2):  # noqa: N802,N803
        """Append one batch to ``output_file`` in the tango-tpx layout (pymepix's signature).

        Each argument may be ``None`` (skipped), a tango-tpx container (``Events``,
        ``Centroids``, ``TriggerTable``; times in 25/4096 ns units) or what pymepix passes:
        raw = (trigger nr, x, y, tof [s], tot [ns]); clusters = (trigger nr, x, y, tof [s],
        tot avg [ns], tot max [ns], clustersize) as 7 arrays or one (7, N) array;
        timeStamps = (trigger nr, timestamp [ns since the epoch: header time + trigger
        time], as :class:`~.logic.packet_processor.PacketProcessor` returns with
        ``start_time`` = the header time); trigger1/2 = edge times [s] (negative = falling).
        ``timing/timepix/trigger time`` and ``event trigger`` are the timestamp minus the
        input file's header time (NaN / 0 when the file has no header). The file is created
        with the full layout if needed and marked ``complete`` after the batch is written.
        """
        from tango_tpx.io import hdf5 as H

        if output_file is None:
            return
        tables: dict[str, dict[str, np.ndarray]] = {}
        if raw is not None:
            if hasattr(raw, "trigger_nr"):
                tables["raw"] = H.events_columns(raw)
            else:
                tn, x, y, tof, tot = raw
                tables["raw"] = {"trigger nr": tn, "x": x, "y": y, "tof": tof, "tot": tot}
        if clusters is not None:
            if hasattr(clusters, "trigger_nr"):
                tables["centroided"] = H.centroids_columns(clusters)
            else:
                tn, x, y, tof, tavg, tmax, size = clusters
                tables["centroided"] = {"trigger nr": tn, "x": x, "y": y, "tof": tof, "tot avg": tavg,
                                        "tot max": tmax, "tot sum": np.rint(np.asarray(tavg, np.float64)
                                                           * np.asarray(size, np.float64)),
                                        "clustersize": size}
        if timeStamps is not None:
            start = self._header_time_ns()
            if hasattr(timeStamps, "trigger_nr"):
                tables["timing/timepix"] = H.trigger_table_columns(timeStamps, start or 0)
            else:
                tn, ts = timeStamps
                ts = np.asarray(ts, np.uint64)
                if start is None:
                    trig_ns = np.zeros(len(ts), np.uint64)
                    trig_s = np.full(len(ts), np.nan)
                else:
                    trig_ns = ts - np.uint64(start)
                    trig_s = trig_ns.astype(np.float64) * 1e-9
                tables["timing/timepix"] = {"trigger nr": tn, "event trigger": trig_s, "timestamp": ts,
                                            "trigger time": trig_ns,
                                            "tdc counter": np.zeros(len(ts), np.uint16)}
        for ch, t in ((1, trigger1), (2, trigger2)):
            if t is not None:
                tables[f"triggers/trigger{ch}"] = {"time": np.asarray(t, np.float64)}
        H.append_to_file(output_file, tables)


__all__ = ["RawFileSampler"]
