"""The transports that reach a fleet's members: one per member, opened on demand, closed when idle.

Over SSH/EIC a member's transport holds a connection (and, for EIC, a pushed key's login); a fleet of
hundreds must not keep hundreds of connections open for members it used once. So each member's transport is
made on its first use and closed once nothing has used it for ``idle_close`` seconds and no call is in
flight on it; the next use opens a new one. Over SSM a transport holds no connection of its own (the clients
are the fleet's), and closing an idle one only frees its bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import SandboxConfig
from ..schema import StatusPart
from ..transports.base import LineCallback, RunnerOutput, Transport

log = logging.getLogger(__name__)


@dataclass
class _Open:
    transport: Transport
    last_used: float
    in_flight: int = 0
    closing: bool = field(default=False)


class _InUse(Transport):
    """A member's transport as the fleet hands it out: each call is counted as in flight while it runs."""

    def __init__(self, pool: MemberPool, instance_id: str) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.name = pool.peek(instance_id).name  # type: ignore[misc]

    @property
    def target(self) -> str:
        return self.instance_id

    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        entry = self.pool.checkout(self.instance_id)
        try:
            return await entry.transport.exec_runner(payload, timeout=timeout, on_stdout_line=on_stdout_line)
        finally:
            self.pool.checkin(entry)

    async def status_parts(self) -> list[StatusPart]:
        entry = self.pool.checkout(self.instance_id)
        try:
            return await entry.transport.status_parts()
        finally:
            self.pool.checkin(entry)


@dataclass
class MemberPool:
    """Member transports by instance id; made by ``factory(config_for(instance_id))``."""

    config_for: Callable[[str], SandboxConfig]
    factory: Callable[[SandboxConfig], Transport]
    idle_close: float
    clock: Callable[[], float] = time.monotonic
    #: Transports made so far (a reopened member counts again).
    opened: int = 0
    _open: dict[str, _Open] = field(default_factory=dict)
    _reaper: asyncio.Task[None] | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, instance_id: str) -> Transport:
        """The member's transport (made now if it is not open)."""
        self.peek(instance_id)
        return _InUse(self, instance_id)

    def peek(self, instance_id: str) -> Transport:
        return self._entry(instance_id).transport

    @property
    def open_ids(self) -> list[str]:
        return sorted(self._open)

    def _entry(self, instance_id: str) -> _Open:
        entry = self._open.get(instance_id)
        if entry is None:
            entry = self._open[instance_id] = _Open(self.factory(self.config_for(instance_id)), self.clock())
            self.opened += 1
            self._watch()
        return entry

    def checkout(self, instance_id: str) -> _Open:
        entry = self._entry(instance_id)
        entry.in_flight += 1
        entry.last_used = self.clock()
        return entry

    def checkin(self, entry: _Open) -> None:
        entry.in_flight -= 1
        entry.last_used = self.clock()

    def _watch(self) -> None:
        """Start the idle reaper (once, on the loop of the first use)."""
        if self._reaper is None or self._reaper.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next use starts it
                self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self._open:
            await asyncio.sleep(max(0.02, self.idle_close / 4))
            now = self.clock()
            for instance_id, entry in list(self._open.items()):
                if entry.in_flight == 0 and now - entry.last_used >= self.idle_close:
                    log.debug("closing the idle connection to fleet member %s", instance_id)
                    del self._open[instance_id]
                    task = asyncio.ensure_future(entry.transport.aclose())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        entries, self._open = list(self._open.values()), {}
        await asyncio.gather(*(e.transport.aclose() for e in entries), *self._closing, return_exceptions=True)
