"""A pymepix live-processing script (pymepix's documented pipeline use and data formats); it
runs on tango-tpx with only the package name changed: ``pymepix.processing`` ->
``tango_tpx.processing`` in the import line.

Without a detector it plays the real SPIDR capture centroid_pipeline_test.raw to itself over
UDP, as pymepix's tests do; with a SPIDR, drop ``send_capture`` and use its address.
Usage: python examples/pymepix_centroids.py [CAPTURE.raw]
"""

import queue
import socket
import sys
import time
from multiprocessing import Queue, Value

import numpy as np

from tango_tpx.processing import CentroidPipeline, MessageType

CAPTURE = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/spidr-captures/centroid_pipeline_test.raw"


def free_udp_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


def send_capture(path, address):
    """Play a pymepix .raw file (8-byte header, then the UDP payload) as one datagram."""
    with open(path, "rb") as f:
        payload = f.read()[8:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload, address)


def main():
    data_queue = Queue()
    longtime = Value("L", 2233861246990)      # SPIDR timer, 25 ns ticks (pymepix's test value)
    address = free_udp_address()
    acquisition = CentroidPipeline(data_queue, address, longtime)
    acquisition.eventWindow = (0, 1.0)         # ToF window, s
    acquisition.numBlobProcesses = 2

    acquisition.start()
    send_capture(CAPTURE, address)
    time.sleep(2.0)
    acquisition.stop()

    counts = {}
    centroids = []
    while True:
        try:
            data_type, data = data_queue.get(timeout=1.0)
        except queue.Empty:
            break
        counts[data_type.name] = counts.get(data_type.name, 0) + 1
        if data_type == MessageType.PixelData:
            x, y, toa, tot = data
            print(f"pixels: {len(x)}, first toa {toa[0]:.9f} s, tot {tot[:5]} ns")
        elif data_type == MessageType.EventData:
            trigger, x, y, tof, tot = data
            print(f"events: {len(x)} hits of triggers {trigger.min()}..{trigger.max()}, "
                  f"tof {tof.min() * 1e6:.3f}..{tof.max() * 1e6:.3f} us")
        elif data_type == MessageType.CentroidData:
            centroids.append(data)
    shot, x, y, tof, tot_avg, tot_max, size = np.concatenate(centroids, axis=1)
    print(f"centroids: {len(shot)}, mean size {size.mean():.2f} hits, "
          f"mean tof {tof.mean() * 1e6:.3f} us, largest tot {tot_max.max():.0f} ns")
    print("messages:", dict(sorted(counts.items())))


if __name__ == "__main__":
    main()
