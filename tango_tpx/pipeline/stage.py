"""AcquisitionStage: one pipeline stage = N identical processes (pymepix name and API)."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from .baseplugin import StageWiring


class AcquisitionStage:
    """One stage of an :class:`~tango_tpx.pipeline.acquisition.AcquisitionPipeline`.

    stage: position in the pipeline (lower runs first); num_processes: processes to build.
    Processes are created by :meth:`build` (from the class and arguments given to
    :meth:`configureStage`) and run after :meth:`start`.
    """

    def __init__(self, stage: int, num_processes: int = 1) -> None:
        self._stage_number = int(stage)
        self._num_processes = max(1, int(num_processes))
        self._pipeline_klass: type | None = None
        self._args: tuple = ()
        self._kwargs: dict = {}
        self._pipeline_objects: list = []
        self._conns: list = []           # parent ends of the report/command pipes
        self._child_conns: list = []
        self._input_queue: Any = None
        self._output_queue: Any = None
        #: per-process wiring, set by the pipeline before :meth:`build`
        self.wirings: list[StageWiring] = []
        self.mp_context = mp.get_context("fork")

    @property
    def stage(self) -> int:
        """Position in the pipeline."""
        return self._stage_number

    @stage.setter
    def stage(self, value: int) -> None:
        self._stage_number = int(value)

    @property
    def numProcess(self) -> int:
        """Number of processes built at the next start (>= 1)."""
        return self._num_processes

    @numProcess.setter
    def numProcess(self, value: int) -> None:
        self._num_processes = max(1, int(value))

    @property
    def klass(self) -> type | None:
        return self._pipeline_klass

    def configureStage(self, pipeline_klass: type, *args: Any, **kwargs: Any) -> None:
        """Use ``pipeline_klass(*args, **kwargs)`` for this stage's processes."""
        self._pipeline_klass = pipeline_klass
        self.setArgs(*args, **kwargs)

    def setArgs(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs

    @property
    def processes(self) -> list:
        return self._pipeline_objects

    @property
    def connections(self) -> list:
        """Parent ends of the per-process pipes (reports, commands)."""
        return self._conns

    @property
    def zero_copy(self) -> bool:
        """True when the configured class uses the zero-copy transport (built-in stages)."""
        k = self._pipeline_klass
        return bool(k is not None and getattr(k, "zero_copy_transport", lambda: False)())

    @property
    def outputQueue(self) -> Any:
        """Queue mode: the queue this stage's processes push to (pymepix)."""
        return self._output_queue

    def build(self, input_queue: Any = None, output_queue: Any = None) -> None:
        """Create (not start) the processes.

        Zero-copy stages get their endpoints from :attr:`wirings` (``input_queue`` and
        ``output_queue`` are ignored). Queue-mode stages are built as pymepix does:
        ``klass(*args, **kwargs, input_queue=input_queue, shared_output=output_queue)``,
        with a new ``multiprocessing.Queue`` as output when ``output_queue`` is None.
        """
        if self._pipeline_klass is None:
            raise RuntimeError(f"stage {self.stage} has no class configured")
        self._pipeline_objects, self._conns, self._child_conns = [], [], []
        if not self.zero_copy:
            self._input_queue = input_queue
            self._output_queue = output_queue if output_queue is not None else mp.Queue()
            for _ in range(self._num_processes):
                p = self._pipeline_klass(*self._args, **self._kwargs, input_queue=input_queue,
                                         shared_output=self._output_queue)
                p.daemon = True
                self._pipeline_objects.append(p)
            return
        self._input_queue, self._output_queue = input_queue, output_queue
        if len(self.wirings) != self._num_processes:
            raise RuntimeError(f"stage {self.stage}: {len(self.wirings)} wirings for {self._num_processes} processes")
        base = self._pipeline_klass.__name__
        for k, wiring in enumerate(self.wirings):
            parent_end, child_end = self.mp_context.Pipe(duplex=True)
            self._conns.append(parent_end)
            self._child_conns.append(child_end)
            kwargs = dict(self._kwargs)
            kwargs.setdefault("name", base)
            kwargs["name"] = f"{kwargs['name']}-{k}" if self._num_processes > 1 else kwargs["name"]
            p = self._pipeline_klass(*self._args, input_queue=wiring.input_address, wiring=wiring,
                                     conn=child_end, **kwargs)
            self._pipeline_objects.append(p)

    def start(self) -> None:
        for p in self._pipeline_objects:
            p.start()
        for c in self._child_conns:       # the children hold their own copies
            c.close()
        self._child_conns = []

    def started(self) -> list:
        """The processes that were started (a failed start may leave some unstarted)."""
        return [p for p in self._pipeline_objects if p.pid is not None]

    def alive(self) -> list:
        return [p for p in self.started() if p.is_alive()]

    def join(self, deadline: float) -> bool:
        """Wait until ``deadline`` (monotonic s) for all started processes; True if all ended."""
        for p in self.started():
            p.join(max(0.0, deadline - time.monotonic()))
        return not self.alive()

    def stop(self, force: bool = False) -> None:
        """Ask the processes to end (``enable = False``); with ``force`` terminate them."""
        for p in self._pipeline_objects:
            p.enable = False
        if force:
            self.kill()

    def kill(self, grace: float = 0.3) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s, whatever is still alive."""
        for p in self.alive():
            p.terminate()
        end = time.monotonic() + grace
        for p in self.started():
            p.join(max(0.0, end - time.monotonic()))
        for p in self.alive():
            p.kill()
        for p in self.started():
            p.join(1.0)

    def release(self) -> None:
        """Close the pipes and release the process objects (after they ended)."""
        for c in self._conns + self._child_conns:
            try:
                c.close()
            except OSError:
                pass
        for p in self._pipeline_objects:
            try:
                p.close()
            except ValueError:
                pass
        self._pipeline_objects, self._conns, self._child_conns = [], [], []
