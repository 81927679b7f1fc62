"""Outputs of the SPIDR emulator: a raw/.tpx3 file, UDP datagrams paced to detector time.

:class:`StreamOutputs` is a base class of :class:`~tango_tpx.simulator.spidr.SpidrSimulator`;
it only needs the simulator's ``config``, ``stats`` and block generator ``_generate``.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..tpx3.files import RawFileWriter, Tpx3FileWriter
from .readout import _chunk_starts
from .truth import Truth

if TYPE_CHECKING:
    from .config import SimConfig

__all__ = ["StreamOutputs"]


class StreamOutputs:
    """File and UDP outputs of a simulated stream (see :class:`~tango_tpx.simulator.spidr.SpidrSimulator`)."""

    config: "SimConfig"
    stats: dict[str, int]

    def _generate(self, with_truth: bool) -> Iterator[tuple[np.ndarray, Truth | None]]:
        raise NotImplementedError

    def write_file(self, path: str | Path, truth_path: str | Path | None = None,
                   time_ns: int | None = None) -> dict:
        """Write the stream to ``path``: '.raw' (pymepix, 8-byte header; single chip only) or
        '.tpx3' (ASI chunks; quad streams are chunked per chip). ``truth_path``: also save the
        truth as .npz (held in memory until the end). Refuses existing files
        (FileExistsError). Returns a summary dict (hits, triggers, words, bytes)."""
        p = Path(path)
        ext = p.suffix.lower()
        c = self.config
        if ext not in (".raw", ".tpx3"):
            raise ValueError(f"{p}: output must end in .raw or .tpx3")
        if ext == ".raw" and c.quad:
            raise ValueError(f"{p}: a quad stream needs chip numbers: write a .tpx3 file, not .raw")
        if truth_path is not None and Path(truth_path).exists():
            raise FileExistsError(f"{truth_path}: truth file exists")
        truths: list[Truth] = []
        if ext == ".raw":
            writer = RawFileWriter(p, time_ns=time_ns)
        else:
            writer = Tpx3FileWriter(p)
        try:
            for words, truth in self._generate(with_truth=truth_path is not None):
                if ext == ".raw":
                    writer.write(words)
                elif c.quad:
                    writer.write_framed(words)
                else:
                    writer.write_chip(0, words, chunk_bytes=c.payload_bytes - 8 if c.payload_bytes > 8 else 8)
                if truth is not None:
                    truths.append(truth)
        finally:
            writer.close()
        if truth_path is not None:
            Truth.concat(truths).save(truth_path, c)
        return dict(self._summary(), bytes=writer.bytes_written + getattr(writer, "header_bytes", 0))

    def _summary(self) -> dict:
        s = self.stats
        return dict(hits=s.get("hits", 0), noise_hits=s.get("noise_hits", 0), particles=s.get("particles", 0),
                    dropped_particles=s.get("dropped_particles", 0), triggers=s.get("triggers", 0),
                    words=s.get("words", 0))

    def datagrams(self, words: np.ndarray, payload_bytes: int | None = None) -> list[memoryview]:
        """Split one block of words into datagram payloads of whole words (quad: whole chunks)."""
        pb = payload_bytes or self.config.payload_bytes
        raw = memoryview(np.ascontiguousarray(words, dtype="<u8")).cast("B")
        if not self.config.quad:
            return [raw[i: i + pb] for i in range(0, len(raw), pb - pb % 8)]
        starts = _chunk_starts(np.ascontiguousarray(words, dtype=np.uint64)) * 8
        out = []
        i = 0
        while i < len(starts) - 1:  # pack whole chunks up to pb bytes
            j = i + 1
            while j < len(starts) - 1 and starts[j + 1] - starts[i] <= pb:
                j += 1
            out.append(raw[starts[i]: starts[j]])
            i = j
        return out

    def send_udp(self, host: str, port: int, payload_bytes: int | None = None,
                 as_fast_as_possible: bool = False, stop_event: threading.Event | None = None,
                 truth_path: str | Path | None = None) -> dict:
        """Send the stream as UDP datagrams of whole words (quad: whole .tpx3 chunks), paced
        to the detector time (so to the configured hit rate) unless ``as_fast_as_possible``.
        Stops early (within a few ms) when ``stop_event`` is set. ``truth_path``: save the
        truth (.npz) after a complete run. Returns counts: datagrams, bytes (sent), hits and
        triggers (generated), seconds (wall), stopped (bool).

        Datagrams go out in groups (up to 64 per ``sendmmsg`` call, see
        :class:`~tango_tpx.simulator.udpsend.BatchSender`), each group no earlier than the
        detector time of its last datagram; a group spans at most ~2 ms of detector time."""
        from .udpsend import DEFAULT_BATCH, BatchSender

        pb = int(payload_bytes or self.config.payload_bytes)
        if pb < 8 or pb % 8:
            raise ValueError("payload_bytes must be a positive multiple of 8")
        if self.config.quad and pb < self.config.payload_bytes:
            raise ValueError("a quad stream is framed in chunks of SimConfig.payload_bytes: "
                             "payload_bytes cannot be smaller")
        c = self.config
        block_s = c.block_ms * 1e-3

        def offsets(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Byte ranges of the datagrams of one block (as :meth:`datagrams`)."""
            nbytes = words.size * 8
            if not c.quad:
                starts = np.arange(0, nbytes, pb, dtype=np.int64)
                return starts, np.minimum(starts + pb, nbytes)
            cs = (_chunk_starts(words) * 8).tolist()
            st, en = [], []
            i = 0
            while i < len(cs) - 1:      # pack whole chunks up to pb bytes
                j = i + 1
                while j < len(cs) - 1 and cs[j + 1] - cs[i] <= pb:
                    j += 1
                st.append(cs[i])
                en.append(cs[j])
                i = j
            return np.array(st, np.int64), np.array(en, np.int64)

        counts = dict(datagrams=0, bytes=0, hits=0, triggers=0, seconds=0.0, stopped=False)
        truths: list[Truth] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            tx = BatchSender(sock, (host, int(port)))
            t0 = time.monotonic()
            for bi, (words, truth) in enumerate(self._generate(with_truth=truth_path is not None)):
                if truth is not None:
                    truths.append(truth)
                words = np.ascontiguousarray(words, dtype="<u8")
                starts, ends = offsets(words)
                nd = starts.size
                if as_fast_as_possible:
                    group = 16 * DEFAULT_BATCH
                else:
                    group = max(1, min(DEFAULT_BATCH, int(0.002 * nd / block_s) if block_s > 0 else nd))
                di = 0
                while di < nd:
                    if stop_event is not None and stop_event.is_set():
                        counts["stopped"] = True
                        break
                    dj = min(nd, di + group)
                    if not as_fast_as_possible:
                        lag = t0 + block_s * (bi + dj / nd) - time.monotonic()
                        if lag > 0.001:
                            if stop_event is not None:
                                if stop_event.wait(lag):
                                    counts["stopped"] = True
                                    break
                            else:
                                time.sleep(lag)
                    counts["bytes"] += tx.send(words, starts[di:dj], ends[di:dj])
                    counts["datagrams"] += dj - di
                    di = dj
                if counts["stopped"]:
                    break
            counts["seconds"] = time.monotonic() - t0
        finally:
            sock.close()
        counts["hits"] = self.stats.get("hits", 0)
        counts["triggers"] = self.stats.get("triggers", 0)
        if truth_path is not None and not counts["stopped"]:
            Truth.concat(truths).save(truth_path, c)
        return counts
