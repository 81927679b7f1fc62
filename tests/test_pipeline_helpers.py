"""Shared helpers of the pipeline tests (no tests here)."""

from __future__ import annotations

import os
import socket
import time

import numpy as np

from tango_tpx.device.database import free_port


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to now."""
    return free_port(kind=socket.SOCK_DGRAM)


def send_datagrams(port: int, payloads: list[bytes] | list[memoryview], pause_every: int = 128) -> int:
    """Send each payload as one UDP datagram to 127.0.0.1:port; returns bytes sent."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = 0
    try:
        for i, p in enumerate(payloads):
            s.sendto(p, ("127.0.0.1", port))
            n += len(p)
            if pause_every and i % pause_every == pause_every - 1:
                time.sleep(0.001)
    finally:
        s.close()
    return n


def split(data: bytes, size: int = 8192) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def drain(q) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except Exception:
            return out


def open_fds() -> set[str]:
    """Open file descriptors of this process, with what they point to."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


def child_pids(pid: int | None = None) -> set[int]:
    """Direct children of ``pid`` (default: this process), from /proc."""
    pid = os.getpid() if pid is None else pid
    out: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out |= {int(x) for x in f.read().split()}
        except OSError:
            pass
    return out


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is neither a zombie nor dead (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def random_words(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.uint64)
