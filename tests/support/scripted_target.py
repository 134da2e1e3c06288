"""A target whose runs produce what a test scripts: the handler of a :class:`MockTransport`.

Tests about rendering - what a model reads of a run, its files, a cleanup or a status - choose the run's
output and files here instead of writing a program that makes them. The answers have the runner's own
shapes: inline output is cut by the runner's ``inline_text``, files are served in pages with their sizes,
and ``tests/test_mock_transport.py`` checks every answer's fields against the real runner's, so the two
cannot drift apart unnoticed.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ec2_sandbox import runner


@dataclass
class Outcome:
    """What one run leaves behind: its output, exit status and the files it wrote."""

    stdout: bytes | str = b""
    stderr: bytes | str = b""
    return_code: int = 0
    files: dict[str, bytes | str] = field(default_factory=dict)


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def inline(data: bytes, limit: int) -> dict[str, Any]:
    """The runner's inline form of a captured stream (head and tail within ``limit`` characters)."""
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        return runner.inline_text(fh.name, limit)


def ok(result: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "result": result}


def refused(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"kind": kind, "message": message}}


class ScriptedTarget:
    """Serves ``run`` with the next scripted :class:`Outcome` (an empty success when none is left), and
    ``list``, ``read``, ``inventory`` and ``probe`` from what the runs left. Every request is kept in
    ``requests``, as the runner received it."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = deque(outcomes)
        self.tasks: dict[str, dict[str, bytes]] = {}
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        serve = getattr(self, "_" + request["op"], None)
        if serve is None:
            return refused("protocol", f"unknown op {request['op']!r}")
        return serve(request)

    def _task(self, request: dict[str, Any]) -> dict[str, bytes] | None:
        return self.tasks.get(request["task_hash"])

    def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        outcome = self.outcomes.popleft() if self.outcomes else Outcome()
        stdout, stderr = _bytes(outcome.stdout), _bytes(outcome.stderr)
        inputs = {f["path"]: base64.b64decode(f["b64"]) for f in request.get("files") or []}
        written = {path: _bytes(data) for path, data in outcome.files.items()}
        self.tasks[request["task_hash"]] = {
            **inputs,
            **written,
            "@stdout": stdout,
            "@stderr": stderr,
        }
        limit = int(request.get("inline_chars", 20000))
        code = outcome.return_code
        workdir = os.path.join(request.get("base_dir") or "/base", "tasks", request["task_hash"])
        return ok(
            {
                "success": code == 0,
                "return_code": code,
                "signal": None,
                "termination_reason": "exited",
                "timed_out": False,
                "error_message": None if code == 0 else f"exited with status {code}",
                "execution_time": 0.01,
                "cpu_time": 0.01,
                "peak_memory_kb": 10240,
                "stdout": inline(stdout, limit),
                "stderr": inline(stderr, limit),
                "limits_enforced": ["memory", "processes", "file_size", "open_files", "cpu_time"],
                "stray_processes_killed": 0,
                "task_hash": request["task_hash"],
                "session_id": request.get("session_id"),
                "working_directory": workdir,
                "files_created": sorted(written),
                "files_created_truncated": False,
                "isolation": "none",
                "run_as_uid": os.geteuid(),
                "imds_guard": False,
                "warnings": [],
            }
        )

    def _list(self, request: dict[str, Any]) -> dict[str, Any]:
        task = self._task(request)
        if task is None:
            return refused("not_found", f"no task {request['task_hash']}")
        names = sorted(name for name in task if not name.startswith("@"))
        return ok(
            {
                "task_hash": request["task_hash"],
                "session_id": None,
                "working_directory": "/base/tasks/" + request["task_hash"],
                "exists": True,
                "files": [{"path": name, "size": len(task[name])} for name in names],
                "streams": [{"path": name, "size": len(task[name])} for name in ("@stderr", "@stdout")],
                "skipped": [],
                "truncated": False,
            }
        )

    def _read(self, request: dict[str, Any]) -> dict[str, Any]:
        task = self._task(request)
        if task is None:
            return refused("not_found", f"no task {request['task_hash']}")
        name = request["path"]
        if name not in task:
            return refused("not_found", f"no file {name!r} in task {request['task_hash']}")
        data = task[name]
        offset = int(request.get("offset") or 0)
        page = data[offset : offset + int(request.get("length") or 1 << 20)]
        return ok(
            {"path": name, "size": len(data), "offset": offset, "b64": base64.b64encode(page).decode("ascii")}
        )

    def _inventory(self, request: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        entries = [{"kind": "task", "id": task_hash, "mtime": now} for task_hash in sorted(self.tasks)]
        return ok({"base_dir": request.get("base_dir") or "/base", "now": now, "entries": entries})

    def _probe(self, request: dict[str, Any]) -> dict[str, Any]:
        runtimes = [
            {"name": rt["name"], "available": True, "version": "1.0", "executable": "/usr/bin/" + rt["name"]}
            for rt in request.get("runtimes") or []
        ]
        return ok(
            {
                "runner_python": "3.12.0",
                "base_dir": request.get("base_dir") or "/base",
                "disk_free_bytes": 50 << 30,
                "disk_total_bytes": 100 << 30,
                "privileged": True,
                "bwrap": "/usr/bin/bwrap",
                "bwrap_usable": True,
                "cgroup": "/sys/fs/cgroup",
                "cgroup_controllers": ["memory", "pids"],
                "cgroup_kill": True,
                "imds_guard": True,
                "seccomp": True,
                "on_ec2": False,
                "netns_usable": True,
                "runtimes": runtimes,
                "interpreters": [],
            }
        )
