"""Speaking to the runner: building requests, calling a transport, reading the envelope back."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from . import runner
from .errors import InvalidInputError, TaskNotFoundError, TransportError
from .transports.base import Transport

log = logging.getLogger("ec2_sandbox")
EventCallback = Callable[[dict[str, Any]], None]


@cache
def runner_source() -> bytes:
    """The runner program's bytes, as shipped to remote targets."""
    return Path(runner.__file__).read_bytes()


@cache
def runner_sha256() -> str:
    """The runner's digest: the name of its cached copy on a target, and what the copy is checked against."""
    return hashlib.sha256(runner_source()).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request(op: str, base_dir: str | None, **fields: Any) -> dict[str, Any]:
    return {"v": runner.PROTOCOL, "op": op, "base_dir": base_dir, **fields}


def _redacted(req: dict[str, Any]) -> dict[str, Any]:
    """A request fit for a debug log: no code, file contents or env values."""
    shown = {k: v for k, v in req.items() if k not in ("code_b64", "files", "env")}
    if "files" in req:
        shown["files"] = [f["path"] for f in req["files"]]
    if "env" in req:
        shown["env"] = sorted(req["env"])
    return shown


async def call(
    transport: Transport,
    req: dict[str, Any],
    *,
    timeout: float,
    on_event: EventCallback | None = None,
) -> dict[str, Any]:
    """Send one request and return the runner's ``result``; runner refusals become exceptions."""
    log.debug("runner %s via %s: %s", req["op"], transport.name, _redacted(req))
    payload = json.dumps(req, separators=(",", ":")).encode("utf-8")
    envelope: dict[str, Any] | None = None

    def on_line(line: bytes) -> None:
        if on_event is None or not line.startswith(b'{"event"'):
            return
        try:
            on_event(json.loads(line)["event"])
        except (ValueError, KeyError):
            log.debug("ignoring a malformed event line from the runner")

    out = await transport.exec_runner(payload, timeout=timeout, on_stdout_line=on_line)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith(b'{"envelope"'):
            try:
                envelope = json.loads(line)["envelope"]
            except (ValueError, KeyError):
                envelope = None
            break
    if envelope is None:
        detail = out.stderr.decode("utf-8", "replace").strip()[-2000:] or "(no stderr)"
        raise TransportError(
            f"the runner on {transport.target} returned no result (exit status {out.exit_status}): {detail}"
        )
    if not envelope.get("ok"):
        error = envelope.get("error") or {}
        kind, message = error.get("kind"), error.get("message", "unknown error")
        log.debug("runner refused %s: %s (%s)", req["op"], message, kind)
        if kind == "invalid_input":
            raise InvalidInputError(message)
        if kind == "not_found":
            raise TaskNotFoundError(message)
        raise RunnerRefusal(kind or "internal", message)
    return envelope["result"]


class RunnerRefusal(TransportError):
    """The runner could not do what was asked on the target (runtime missing, environment problem)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
