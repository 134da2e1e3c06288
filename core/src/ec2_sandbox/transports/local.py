"""The local transport: the runner on this machine.

By default the runner's code runs in this process, on a worker thread: the user's program is still a
separate process with its own limits, but no second interpreter has to start for the runner (that would
double the latency of a short run). ``mode="subprocess"`` runs the runner as its own process, exactly as
remote targets do.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from .. import runner
from ..schema import StatusPart
from .base import LineCallback, RunnerOutput, Transport

T = TypeVar("T")
# Threads mostly sit in waitpid; many concurrent runs need many threads, not CPU.
_POOL = ThreadPoolExecutor(max_workers=256, thread_name_prefix="ec2-sandbox-local")


class LocalTransport(Transport):
    name = "local"
    supports_streaming = True

    def __init__(self, mode: Literal["inprocess", "subprocess"] = "inprocess") -> None:
        self.mode = mode
        self.supports_warm_start = mode == "inprocess"
        if mode == "inprocess":  # pages pass as bytes, not in a line of JSON: fewer, larger ones
            self.read_page_bytes = 32 << 20

    @property
    def target(self) -> str:
        return "local"

    @property
    def in_process(self) -> bool:
        """Whether requests may go to :meth:`call_in_process` (no JSON, bytes as they are)."""
        return self.mode == "inprocess"

    async def call_in_process(
        self, req: dict[str, Any], *, timeout: float, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Serve one request with the runner in this process and return its envelope.

        File contents (``raw`` in ``files``, a read page's ``raw``) pass as bytes; the rest of the envelope
        takes the same JSON round trip as over a channel, so callers see the same types either way.
        """
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()

        def emit(event: dict) -> None:
            if on_event is None or abandoned.is_set():
                return
            try:
                loop.call_soon_threadsafe(on_event, event)
            except RuntimeError:  # the loop closed between the check and the call
                abandoned.set()

        def work() -> dict[str, Any]:
            envelope = runner.handle(req, emit)
            result = envelope.get("result")
            raw = result.pop("raw", None) if isinstance(result, dict) else None
            line = runner.fit_envelope(envelope, req.get("max_envelope_chars"))
            plain = json.loads(line)["envelope"]
            if raw is not None:
                plain["result"]["raw"] = raw
            return plain

        return await self._in_pool(loop, work, req, timeout, abandoned)

    async def _in_pool(
        self,
        loop: asyncio.AbstractEventLoop,
        work: Callable[[], T],
        req: object,
        timeout: float,
        abandoned: threading.Event,
    ) -> T:
        try:
            return await asyncio.wait_for(loop.run_in_executor(_POOL, work), timeout)
        except BaseException:
            # Cancelled or out of time: the worker thread cannot be interrupted, but its program can.
            abandoned.set()
            task_hash = req.get("task_hash") if isinstance(req, dict) else None
            if task_hash:
                runner.cancel_run(task_hash)
            raise

    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        if self.mode == "subprocess":
            return await self._subprocess(payload, timeout, on_stdout_line)
        loop = asyncio.get_running_loop()
        # Set once the caller has given up: the worker thread may still stream the program's last output
        # while the caller's loop is already closed, and that output is no one's to receive.
        abandoned = threading.Event()

        def emit(event: dict) -> None:
            if on_stdout_line is None or abandoned.is_set():
                return
            line = json.dumps({"event": event}, separators=(",", ":")).encode()
            try:
                loop.call_soon_threadsafe(on_stdout_line, line)
            except RuntimeError:  # the loop closed between the check and the call
                abandoned.set()

        req = json.loads(payload)

        def work() -> bytes:
            return runner.respond(req, emit).encode() + b"\n"

        stdout = await self._in_pool(loop, work, req, timeout, abandoned)
        return RunnerOutput(0, stdout, b"")

    async def _subprocess(
        self, payload: bytes, timeout: float, on_stdout_line: LineCallback | None
    ) -> RunnerOutput:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            runner.__file__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 30,  # one envelope line can carry a large inline output or file page
            env={
                "PATH": runner.SYSTEM_PATH,
                "HOME": os.environ.get("HOME", "/"),
                "LANG": "C.UTF-8",
            },
        )
        assert proc.stdin and proc.stdout and proc.stderr
        proc.stdin.write(payload)
        proc.stdin.close()
        lines: list[bytes] = []

        async def read_stdout() -> None:
            assert proc.stdout
            async for line in proc.stdout:
                lines.append(line)
                if on_stdout_line is not None:
                    on_stdout_line(line.rstrip(b"\n"))

        try:
            _, stderr, _ = await asyncio.wait_for(
                asyncio.gather(read_stdout(), proc.stderr.read(), proc.wait()), timeout
            )
        except BaseException:
            # SIGTERM lets the runner kill the program's process group before it goes.
            if proc.returncode is None:
                proc.terminate()
            raise
        return RunnerOutput(proc.returncode or 0, b"".join(lines), stderr)

    async def status_parts(self) -> list[StatusPart]:
        return [
            StatusPart(
                name="host",
                ok=True,
                message=f"local machine, runner as uid {os.geteuid()} ({self.mode})",
                details={"euid": os.geteuid(), "mode": self.mode},
            )
        ]


def create_local_transport(config: object) -> LocalTransport:
    return LocalTransport()
