"""A transport driven by a handler function, for tests about what is made of the runner's answers.

As httpx's ``MockTransport``: the handler receives what a real transport would carry to the runner (the
runner request, decoded from its JSON) and returns the runner's envelope (``{"ok": True, "result": ...}``
or ``{"ok": False, "error": {"kind": ..., "message": ...}}``). Everything above the cut-off -
:mod:`ec2_sandbox.protocol`, :class:`~ec2_sandbox.sandbox.AsyncSandbox`, the tools, presentation and the
adapters - runs as it does against a real target, with no runner, bubblewrap or network below it::

    def handler(request):
        if request["op"] == "probe":
            return {"ok": True, "result": {...}}
        return {"ok": False, "error": {"kind": "not_found", "message": "no such task"}}

    sandbox = AsyncSandbox(transport=MockTransport(handler))

It is for tests of rendering. What a run does on a target is the runner's to show: those tests keep the
local transport (or SSH, SSM), which run the real runner.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from .base import LineCallback, RunnerOutput, Transport

Envelope = dict[str, Any]
Handler = Callable[[dict[str, Any]], Envelope | Awaitable[Envelope]]


class MockTransport(Transport):
    """Answers every runner request with ``handler(request)`` (a function or a coroutine function)."""

    name = "mock"

    def __init__(self, handler: Handler, *, target: str = "mock") -> None:
        self.handler = handler
        self._target = target

    @property
    def target(self) -> str:
        return self._target

    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        envelope = self.handler(json.loads(payload))
        if inspect.isawaitable(envelope):
            envelope = await envelope
        if not isinstance(envelope, dict) or not isinstance(envelope.get("ok"), bool):
            # Said here: the caller would otherwise see "the runner returned no result".
            raise TypeError(f"a MockTransport handler must return the runner's envelope, got {envelope!r}")
        line = json.dumps({"envelope": envelope}, separators=(",", ":"))
        return RunnerOutput(0, line.encode("utf-8") + b"\n", b"")
