"""The receiver of the armed pipeline: :class:`GatedUdpSampler`, behind a gate.

It receives all the time. While the gate is closed it drops what it receives (counted in
``idle_bytes``), keeping only the latest global time (0x44/0x45 pair) in it and the host
time it came. ``begin`` opens the gate (and the recording, if asked) and sends a *begin*
marker down with that detector clock; ``end`` sends an *end* marker, closes the gate and the
recording. Each raw chunk carries its byte offset in the acquisition (meta ``o``), so the
decoder can name the exact byte where a bounded acquisition ended.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from ..runtime.shm import META_BYTES, META_SLOT
from ..tpx3.codec import last_global_time
from .counters import CTRL_FORCE
from .messages import MessageType, encode_frames
from .udpsampler import UdpSampler

#: meta keys of the acquisition markers and chunk offsets
META_ACQ, META_ID, META_OFFSET, META_TIME, META_TRIGGERS = "acq", "id", "o", "t", "n"
#: meta keys of the *begin* marker's detector clock: latest global time seen while idle
#: (25 ns ticks, -1 none), the host time it came and the host time of the begin (s, monotonic)
META_GLOBAL, META_GLOBAL_HOST, META_BEGIN_HOST = "g", "gh", "bh"
#: s after a global time was found in dropped data before the next one is looked for
#: (SPIDR sends one a second)
IDLE_SCAN_S = 0.5


class GatedUdpSampler(UdpSampler):
    """UDP receiver whose hand-off is gated by ``begin``/``end`` commands from the parent."""

    def pre_run(self) -> None:
        super().pre_run()
        self._gate = False
        self._acq_off = 0
        self._idle_gt = -1            # latest global time in dropped data (25 ns ticks)
        self._idle_gt_host = 0.0      # time.monotonic() when it came
        last_global_time(np.zeros(2, np.uint64))   # load the kernel before data

    def _handoff(self, slot, nbytes: int, ndgram: int):
        if not self._gate:                      # closed: drop, reuse the same buffer
            self._kernel_drops()
            self.wiring.counters.add("idle_bytes", nbytes)
            now = time.monotonic()
            if now - self._idle_gt_host >= IDLE_SCAN_S:
                gt = last_global_time(slot.buf[:nbytes - nbytes % 8].view(np.uint64))
                if gt >= 0:
                    self._idle_gt, self._idle_gt_host = gt, now
            return slot
        c = self.wiring.counters
        self._kernel_drops()
        chunk = slot.buf[:nbytes]
        if self.raw2disk.recording:
            slot.writing = True
            self.raw2disk.put(chunk, slot)
        meta = {META_OFFSET: self._acq_off}
        ring, ri = self._ring, slot.ring_index
        try:
            if ri >= 0:
                ring.acquire(ri)
                self._down[0].send_multipart(
                    encode_frames(MessageType.RawData, None, self._seq,
                                  {META_SLOT: ri, META_BYTES: nbytes, **meta}), flags=zmq.NOBLOCK, copy=False)
            else:
                slot.tracker = self._down[0].send_multipart(
                    encode_frames(MessageType.RawData, chunk, self._seq, meta), flags=zmq.NOBLOCK,
                    copy=False, track=True)
            c.stage_sent(self.wiring.next_slot)
        except zmq.Again:
            if ri >= 0:
                ring.release(ri)
            c.add("handoff_dropped_bytes", nbytes)
        self._acq_off += nbytes
        self._seq += 1
        c.add("chunks", 1)
        c.add("datagrams", ndgram)
        c.add("bytes", nbytes)
        return self._free_buffer()

    def _send_marker(self, meta: dict) -> None:
        frames = encode_frames(MessageType.RawData, np.zeros(0, np.uint8), self._seq, meta)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self._down[0].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                if self.wiring.counters.ctrl[CTRL_FORCE] or time.monotonic() > deadline:
                    self.report("fault", f"acquisition marker {meta.get(META_ACQ)} could not be sent "
                                "(the decoder does not take data)")
                    return
                time.sleep(0.001)
        self.wiring.counters.stage_sent(self.wiring.next_slot)
        self._seq += 1

    def _apply_commands(self) -> None:
        self._has_pending = False
        while self._pending_cmds:
            _, cid, name, arg = self._pending_cmds.popleft()
            if name == "begin":
                path = ""
                if arg.get("record"):
                    try:
                        path = self.raw2disk.open(arg["record"])
                    except OSError as exc:
                        self.report("reply", cid, False, (type(exc).__name__, exc.errno, str(exc)))
                        continue
                self._acq_off = 0
                self._send_marker({META_ACQ: "begin", META_ID: arg["id"], META_TIME: arg.get("time_s", 0.0),
                                   META_TRIGGERS: arg.get("triggers", 0), META_GLOBAL: self._idle_gt,
                                   META_GLOBAL_HOST: self._idle_gt_host, META_BEGIN_HOST: time.monotonic()})
                self._gate = True
                self.report("reply", cid, True, path)
            elif name == "end":
                if self._gate:
                    self._send_marker({META_ACQ: "end", META_ID: arg["id"], META_OFFSET: self._acq_off})
                    self._gate = False
                if self.raw2disk.recording:
                    self.raw2disk.close(lambda p, n, cid=cid: self.report("reply", cid, True, (p, n)))
                else:
                    self.report("reply", cid, True, ("", 0))
            elif name == "open":
                try:
                    self.report("reply", cid, True, self.raw2disk.open(arg))
                except OSError as exc:
                    self.report("reply", cid, False, (type(exc).__name__, exc.errno, str(exc)))
            elif name == "close":
                if not self.raw2disk.recording:
                    self.report("reply", cid, True, ("", 0))
                else:
                    self.raw2disk.close(lambda p, n, cid=cid: self.report("reply", cid, True, (p, n)))
            else:
                self.report("reply", cid, False, ("ValueError", 0, f"unknown command {name!r}"))
