"""The attack suite's fixtures: a fresh base dir and sandbox per test, with bubblewrap and without.

Every attack ends with ``await box.assert_recovers()``: the next ordinary run in the same session works, and
no process of the sandbox (its uids, or a process carrying the test's marker) is left anywhere on the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest

from ec2_sandbox import AsyncSandbox, ExecutionResult, SandboxConfig, protocol, runner

IS_ROOT = os.geteuid() == 0
HAVE_BWRAP = runner.find_bwrap() is not None
HAVE_NODE = shutil.which("node", path=runner.SYSTEM_PATH) is not None
UID_FIRST, UID_COUNT = runner.SANDBOX_UID_RANGE

BWRAP = pytest.param("bwrap", marks=pytest.mark.requires_bwrap, id="bwrap")
NONE = pytest.param("none", id="none")

needs_node = pytest.mark.skipif(not HAVE_NODE, reason="node is not installed (apt-get install nodejs)")


@pytest.fixture(params=[BWRAP, NONE])
def isolation(request: pytest.FixtureRequest) -> str:
    if not IS_ROOT:
        pytest.skip("the attack suite runs as root: the runner then drops every run to a per-session uid")
    if request.param == "bwrap" and not HAVE_BWRAP:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    return request.param


@pytest.fixture
def bwrap_only(isolation: str) -> str:
    return isolation


class Box:
    """One sandbox under attack, with what the checks need: its base dir, session and marker."""

    def __init__(self, base: str, isolation: str, **overrides: Any) -> None:
        self.base = base
        self.isolation = isolation
        self.marker = "atkmark" + uuid.uuid4().hex[:16]
        self.session = "atk-" + uuid.uuid4().hex[:16]
        settings: dict[str, Any] = {
            "base_sandbox_dir": base,
            "isolation": isolation,
            "max_execution_time": 30,
            "max_memory_mb": 128,
            "max_processes": 24,
            "max_file_size_mb": 2,
            "max_output_chars": 2000,
        }
        settings.update(overrides)
        self.sb = AsyncSandbox(SandboxConfig(**settings))

    def with_config(self, **overrides: Any) -> Box:
        """Another sandbox on the same base dir and session, with other settings."""
        isolation = overrides.pop("isolation", self.isolation)
        other = Box(self.base, isolation, **overrides)
        other.session, other.marker = self.session, self.marker
        return other

    async def run(
        self,
        code: str,
        runtime: str = "python3",
        *,
        session: str | bool | None = True,
        env: dict[str, str] | None = None,
        timeout: int = 10,
        files: dict[str, str | bytes] | None = None,
    ) -> ExecutionResult:
        env_vars = {"ATTACK_MARK": self.marker, **(env or {})}
        sid = self.session if session is True else (None if session is False else session)
        return await self.sb.execute_code(code, runtime, sid, files=files, env_vars=env_vars, timeout=timeout)

    #: The limits of a run request built by hand (raw_run), as this box's config would send them.
    limits: ClassVar[dict[str, int]] = {
        "memory_mb": 128,
        "file_size_mb": 2,
        "open_files": 256,
        "processes": 24,
        "cpu_seconds": 10,
    }

    async def raw_run(self, **fields: Any) -> dict[str, Any]:
        """A run request built by hand, as a hostile client sends it: the runner must refuse on its own."""
        req: dict[str, Any] = {
            "task_hash": uuid.uuid4().hex,
            "session_id": self.session,
            "runtime": self.sb.runtime("python3").to_runner(),
            "code_b64": protocol.b64(b"print('ran')"),
            "files": [],
            "env": {},
            "limits": dict(self.limits),
            "timeout": 5,
            "isolation": self.isolation,
            "network": False,
        }
        req.update(fields)
        request = protocol.request("run", self.base, **req)
        payload = json.dumps(request).encode()
        out = await self.sb.transport.exec_runner(payload, timeout=30)
        line = out.stdout.splitlines()[-1]
        return json.loads(line)["envelope"]

    def assert_out_of_memory(self, result: ExecutionResult) -> None:
        """A memory bomb's result. Under bubblewrap the zygote counts the program's own peak, which confirms
        the limit. Without it the program is forked from this test process, whose size its peak count starts
        from, so nothing the program cannot fake confirms it: its words are named as a hint."""
        assert not result.success, result
        if self.isolation == "bwrap":
            assert result.termination_reason == "memory_limit", result
            assert "128 MB" in (result.error_message or ""), result
        else:
            assert result.termination_reason in ("exited", "signal"), result
            assert "ran out of memory (the limit is 128 MB)" in (result.error_message or ""), result
            assert "a hint" in (result.error_message or ""), result

    def uids(self) -> set[int]:
        if not os.path.isdir(os.path.join(self.base, runner.RUNS)):
            return set()
        return set(runner.UidPool(self.base, *runner.SANDBOX_UID_RANGE).table().values())

    def strays(self) -> list[str]:
        """Live processes (zombies aside) running as this box's uids or carrying its marker."""
        uids = self.uids()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/status") as fh:
                    status = fh.read()
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    cmdline = fh.read()
                with open(f"/proc/{name}/environ", "rb") as fh:
                    environ = fh.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").strip().startswith("Z"):
                continue
            real_uids = {int(u) for u in fields.get("Uid", "").split()}
            mark = self.marker.encode()
            if real_uids & uids or mark in cmdline or mark in environ:
                found.append(f"pid {name} uid {sorted(real_uids)}: {cmdline[:200]!r}")
        return found

    async def wait_no_strays(self, seconds: float = 3.0) -> list[str]:
        deadline = time.monotonic() + seconds
        while True:
            left = self.strays()
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.05)

    async def assert_recovers(self) -> None:
        """The next ordinary run on the same sandbox works, and nothing of the attack still runs."""
        result = await self.run("print('still fine')")
        assert result.success, result
        assert result.stdout == "still fine\n", result
        assert result.termination_reason == "exited"
        assert await self.wait_no_strays() == []


@pytest.fixture
def base_dir(tmp_base_dir: str) -> str:
    """The suite-wide sandbox base dir (tests/conftest.py), under the name these tests use."""
    return tmp_base_dir


@pytest.fixture
async def box(isolation: str, base_dir: str) -> AsyncIterator[Box]:
    b = Box(base_dir, isolation)
    yield b
    await b.sb.aclose()
    # Whatever happened in the test, leave no process of this box behind for the next one.
    for uid in b.uids():
        runner.kill_uid(uid)


@pytest.fixture
async def best_box(base_dir: str) -> AsyncIterator[Box]:
    """One sandbox with the best isolation here, for attacks whose handling does not depend on it."""
    if not IS_ROOT:
        pytest.skip("the attack suite runs as root: the runner then drops every run to a per-session uid")
    b = Box(base_dir, "bwrap" if HAVE_BWRAP else "none")
    yield b
    await b.sb.aclose()
    for uid in b.uids():
        runner.kill_uid(uid)


class LoopbackServer:
    """A TCP server on 127.0.0.1 (a free port) that records what each connection sent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(1024))
                    conn.sendall(b"pong")
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()
