"""pymepix import path of ``MessageType`` (same values; ``EndOfStream`` is internal)."""

from ..pipeline.messages import MessageType

__all__ = ["MessageType"]
