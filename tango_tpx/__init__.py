"""tango-tpx: Timepix3 (SPIDR) acquisition, processing and Tango device server.

Layers (each imports only the ones listed before it):
``tpx3`` (word codec, files) -> ``processing`` (events, clustering) -> ``io`` (HDF5)
-> ``pipeline`` (processes, UDP, ZMQ) -> ``device`` (Tango).
"""

__version__ = "0.1.0"
