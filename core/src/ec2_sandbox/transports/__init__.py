"""Transports carry the runner's request to the target and its output back; they know nothing of runtimes."""

from .base import RunnerOutput, Transport
from .mock import MockTransport

__all__ = ["MockTransport", "RunnerOutput", "Transport"]
