"""The transport interface - the strict point of cut-off.

Below this line: bytes in (the runner's JSON request), an exit status and bytes out. Above it: requests,
results and models (:mod:`ec2_sandbox.protocol`, :mod:`ec2_sandbox.sandbox`). A transport runs the runner
program (:func:`ec2_sandbox.protocol.runner_source`) on its target with the payload as its input.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ..schema import StatusPart

LineCallback = Callable[[bytes], None]


@dataclass(frozen=True)
class RunnerOutput:
    """What the runner process did: its exit status and everything it printed."""

    exit_status: int
    stdout: bytes
    stderr: bytes


class Transport(abc.ABC):
    """Runs the runner on a target. Subclasses set the capability attributes that apply to them."""

    name: ClassVar[str] = "transport"
    #: Largest payload one call can carry (None: no limit). Larger requests are the transport's to split.
    max_request_bytes: int | None = None
    #: Characters of stdout the channel returns (SSM: 24,000). The runner fits its envelope under it.
    max_output_chars: int | None = None
    #: Bytes one ``read`` call asks for at most (None: as many as fit ``max_output_chars``). A transport that
    #: can carry more of compressible data per call (:mod:`.ssm`) asks for more and takes a short read.
    read_page_bytes: int | None = None
    #: ``read`` calls a file's pages may have in flight at once.
    read_window: int = 1
    #: Bytes a read must have left after its first page before :meth:`bulk_read` carries the rest; 0: it
    #: carries whole reads; None: the transport has no way of its own, every page is a ``read`` call.
    bulk_read_after: int | None = None
    #: Whether ``on_stdout_line`` is called while the runner is still running.
    supports_streaming: bool = False
    #: Whether the runner outlives a call, so that it can keep a warm interpreter for Python runs.
    supports_warm_start: bool = False

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """Who the code runs on: 'local', an instance id, a host."""

    @abc.abstractmethod
    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        """Run the runner with ``payload`` as its request; give up after ``timeout`` seconds."""

    async def bulk_read(
        self, request: dict[str, Any], sink: Callable[[bytes], object], *, timeout: float
    ) -> tuple[int, int | None]:
        """Carry the runner ``read`` in ``request`` (a range of a file) a way of the transport's own, handing
        the bytes to ``sink`` in order; return how many, and the file's size (None if it learnt none).
        Fewer than asked (0 included) is not an error: the caller pages through ``read`` calls from where
        this stopped. Called only when ``bulk_read_after`` is set; ``timeout`` applies to each call."""
        return 0, None

    async def status_parts(self) -> list[StatusPart]:
        """Transport-specific health checks (instance state, agent ping, SSH reachability)."""
        return []

    async def aclose(self) -> None:
        """Release connections; the transport may not be used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
