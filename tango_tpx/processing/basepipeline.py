"""pymepix import path of ``BasePipelineObject`` (a ``multiprocessing.Process``).

Subclass it and override :meth:`process` (return ``(MessageType, data)`` or
``(None, None)``), optionally ``pre_run``/``post_run``, and add it to a pipeline with
``addStage``: it receives the previous stage's messages in pymepix's shapes and its
``pushOutput`` reaches the next custom stage or ``data_queue``.
"""

from ..pipeline.baseplugin import BasePipelineObject

__all__ = ["BasePipelineObject"]
