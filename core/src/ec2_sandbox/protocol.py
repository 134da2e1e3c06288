"""Speaking to the runner: building requests, calling a transport, reading the envelope back."""

from __future__ import annotations

import ast
import asyncio
import base64
import collections
import hashlib
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

from . import runner
from .errors import InvalidInputError, TaskNotFoundError, TransportError
from .transports.base import Transport

log = logging.getLogger(__name__)
EventCallback = Callable[[dict[str, Any]], None]


#: The runner's line that a shipped copy fills with its companions' sources.
COMPANIONS_LINE = b'COMPANIONS: "dict[str, str]" = {}\n'
#: Files shipped inside the runner: the session interpreter runs from its own file on the target; a runner
#: that lives on between requests (the SSH service) also carries the zygote, for warm starts.
COMPANIONS = ("kernel.py",)
LONG_LIVED_COMPANIONS = ("kernel.py", "zygote.py")


@cache
def runner_source(long_lived: bool = False) -> bytes:
    """The runner program's bytes, as shipped to remote targets: one file, its companions inside, without
    docstrings and comments (the first request to a new target must carry it in one SSM command)."""
    source = Path(runner.__file__).read_bytes()
    if source.count(COMPANIONS_LINE) != 1:
        raise RuntimeError("runner.py must have exactly one COMPANIONS line to fill")
    here = Path(runner.__file__).parent
    names = LONG_LIVED_COMPANIONS if long_lived else COMPANIONS
    filled = {name: shipped_form((here / name).read_text("utf-8")) for name in names}
    whole = source.replace(COMPANIONS_LINE, b"COMPANIONS = " + repr(filled).encode("utf-8") + b"\n")
    return shipped_form(whole.decode("utf-8")).encode("utf-8")


def shipped_form(source: str) -> str:
    """``source`` as the same program without its docstrings and comments (ast.unparse keeps the code)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            first = node.body[0] if node.body else None
            value = (
                first.value.value
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                else None
            )
            if isinstance(value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


@cache
def runner_sha256(long_lived: bool = False) -> str:
    """The runner's digest: the name of its cached copy on a target, and what the copy is checked against."""
    return hashlib.sha256(runner_source(long_lived)).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _on_the_wire(req: dict[str, Any], in_process: bool) -> dict[str, Any]:
    """The request as the runner takes it. Input files travel as bytes (``data``) up to here: a runner in
    this process takes them as they are (``raw``), any other gets base64 in JSON; a runner in this process
    is also asked for read pages as bytes."""
    if not req.get("files") and not (in_process and req.get("op") == "read"):
        return req
    wire = dict(req)
    if req.get("files"):
        wire["files"] = [
            entry
            if "data" not in entry
            else {"path": entry["path"], "raw": entry["data"]}
            if in_process
            else {"path": entry["path"], "b64": b64(entry["data"])}
            for entry in req["files"]
        ]
    if in_process and req.get("op") == "read":
        wire["raw"] = True
    return wire


def request(op: str, base_dir: str | None, **fields: Any) -> dict[str, Any]:
    return {"v": runner.PROTOCOL, "op": op, "base_dir": base_dir, **fields}


def _redacted(req: dict[str, Any]) -> dict[str, Any]:
    """A request fit for a debug log: no code, file contents or env values."""
    shown = {k: v for k, v in req.items() if k not in ("code_b64", "files", "env", "upload")}
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
    direct = getattr(transport, "call_in_process", None)
    if direct is not None and getattr(transport, "in_process", False):
        return result(await direct(_on_the_wire(req, True), timeout=timeout, on_event=on_event), req)
    payload = json.dumps(_on_the_wire(req, False), separators=(",", ":")).encode("utf-8")
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
    return result(envelope, req)


def result(envelope: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    """The envelope's ``result``; a runner refusal becomes an exception."""
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


#: Most bytes a compressed page may claim to unpack to (a page never asks for more than a few MB).
MAX_PAGE_BYTES = 64 << 20


def page_data(page: dict[str, Any]) -> bytes:
    """The bytes of one ``read`` page: ``b64``, or ``z`` (zlib, then base64) of ``zlen`` bytes where the
    transport packed compressible data to carry more of it per call."""
    if isinstance(page.get("raw"), bytes):  # from a runner in this process
        return page["raw"]
    try:
        if "z" not in page:
            return base64.b64decode(page["b64"], validate=True)
        length = int(page["zlen"])
        if not 0 <= length <= MAX_PAGE_BYTES:
            raise TransportError(f"a compressed page claims {length} bytes")
        unpack = zlib.decompressobj()
        data = unpack.decompress(base64.b64decode(page["z"], validate=True), length)
    except (ValueError, zlib.error) as exc:  # binascii.Error is a ValueError
        raise TransportError(f"a page of a read does not decode: {exc}") from exc
    if len(data) != length or unpack.unconsumed_tail or not unpack.eof:
        raise TransportError("a compressed page did not unpack to the length it claims")
    return data


Fetch = Callable[[int, int], Awaitable[tuple[bytes, int]]]
#: ``bulk(position, length) -> (bytes handed to the sink, the file's size or None)``: a transport's own
#: way to carry a long read.
Bulk = Callable[[int, int], Awaitable[tuple[int, int | None]]]


async def read_pages(
    fetch: Fetch,
    offset: int,
    want: int,
    *,
    first_page: int,
    min_page: int,
    max_page: int,
    window: int,
    sink: Callable[[bytes], object],
    bulk: Bulk | None = None,
    bulk_after: int | None = None,
) -> tuple[int, int]:
    """Read ``want`` bytes of a file from ``offset`` with ``fetch(position, length) -> (data, size)`` and
    hand them to ``sink`` in order; return ``(bytes written, size)``.

    The first page tells the file's size. Pages ask for ``min_page`` to ``max_page`` bytes, after what the
    last one carried. The rest is asked for in ranges, up to ``window`` at once; a page
    may come back short (the channel carried less than asked), and what it left is asked for again before
    anything further. Pages may finish in any order: they are held until every byte before them has gone
    to ``sink``, and no range is asked for more than ``2 * window`` pages ahead of it, so memory stays
    bounded whatever the file's size.

    ``bulk(position, length)`` may carry a range its own way (a transport's): it hands bytes to ``sink`` in
    order and returns how many and the file's size (None: it carried nothing). It is asked for the whole
    read first when ``bulk_after`` is 0, else for the rest when more than ``bulk_after`` bytes are left
    after the first page; paging goes on from wherever it stopped.
    """
    position = offset
    if bulk is not None and bulk_after == 0:
        carried, known = await bulk(offset, want)
        position += carried
        if known is not None and position >= min(offset + want, known):
            return carried, known
    asked = min(offset + want - position, first_page)
    data, size = await fetch(position, asked)
    sink(data)
    position += len(data)
    end = min(offset + want, size)
    if data and bulk is not None and bulk_after and end - position > bulk_after:
        position += (await bulk(position, end - position))[0]
    if not data or position >= end:
        return position - offset, size
    ask = _next_ask(len(data), asked, min_page, max_page)
    gaps: collections.deque[tuple[int, int]] = collections.deque()
    claimed = position  # everything before this was asked for
    held: dict[int, bytes] = {}
    emitted = position
    running: dict[asyncio.Task[tuple[bytes, int]], tuple[int, int]] = {}
    try:
        while emitted < end:
            while len(running) < max(1, window):
                if gaps:
                    start, stop = gaps.popleft()
                elif claimed < end and claimed - emitted < 2 * max(1, window) * ask:
                    start, stop = claimed, min(end, claimed + ask)
                    claimed = stop
                else:
                    break
                running[asyncio.ensure_future(fetch(start, stop - start))] = (start, stop)
            if not running:
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: running[t][0]):
                start, stop = running.pop(task)
                chunk, size = task.result()
                if not chunk:
                    end = min(end, start)  # the file ended sooner than it said
                    continue
                held[start] = chunk[: stop - start]
                if start + len(chunk) < stop:
                    gaps.appendleft((start + len(chunk), stop))
                ask = _next_ask(len(chunk), stop - start, min_page, max_page)
            while emitted in held:
                chunk = held.pop(emitted)
                sink(chunk)
                emitted += len(chunk)
            gaps = collections.deque(sorted(g for g in gaps if g[0] < end))
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    return emitted - offset, size


def _next_ask(got: int, asked: int, min_page: int, max_page: int) -> int:
    """A short page says how much the channel carries: ask for about that much next; a full one, for more.
    Never less than ``min_page`` (what the channel always carries): the short rest of a page says nothing."""
    return max(1, min_page, min(max_page, got * 2 if got >= asked else got))
