"""What a language model sees: tool outputs and errors turned into text, JSON and images.

Every framework adapter calls :func:`call_tool` and renders the :class:`Rendered` it gets back into its
framework's own result type, so the wording a model reads is written once, here:

- a run: status, exit code, task hash, files created, then stdout and stderr as the runner cut them to
  ``max_output_chars`` (head and tail, as fields of the result), with a note between them saying how much
  was cut and how to read the rest with ``ec2_get_files`` — the only place those words are written;
- files: text as text, binary as base64 behind a clear marker, and images (PNG, JPEG, GIF, WebP, detected
  by their magic bytes) as :class:`Image` objects the adapter passes on as the framework's image content;
- a bad call: what was wrong, field by field, and how to fix it, built from the pydantic
  ``ValidationError`` or the core's :class:`InvalidInputError`; the agent run goes on.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from . import runner
from .errors import ConfigError, InvalidInputError, SandboxError, TaskNotFoundError, TransportError
from .schema import (
    CleanupResult,
    ExecutionResult,
    FileContent,
    GetFilesResult,
    InstanceStatus,
)

if TYPE_CHECKING:
    from .config import SandboxConfig
    from .sandbox import AsyncSandbox, Sandbox
    from .tools import ToolSpec

log = logging.getLogger(__name__)

#: Images attached to one ec2_code_execution result at most (the rest are named, to fetch one by one).
MAX_ATTACHED_IMAGES = 4
#: Largest image attached inline, in bytes (providers refuse bigger ones).
MAX_IMAGE_BYTES = 3_750_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
BINARY_MARKER = "[binary file, base64-encoded]"


@dataclass(frozen=True)
class Image:
    """An image file a run produced, to hand to the model as image content."""

    path: str
    mime_type: str
    data: bytes

    @property
    def format(self) -> str:
        """'png', 'jpeg', 'gif' or 'webp'."""
        return self.mime_type.split("/", 1)[1]

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass
class Rendered:
    """One tool result, ready for a framework: ``text`` for the model, ``data`` as JSON, ``images``."""

    tool: str
    text: str
    data: dict[str, Any]
    images: list[Image] = field(default_factory=list)
    is_error: bool = False

    def json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, default=str)

    def compact(self) -> dict[str, Any]:
        """``data`` without the bulky text ``text`` already carries (stdout, stderr, file contents): for
        frameworks that hand the model both the text and the JSON, so nothing is read twice."""
        data = {k: v for k, v in self.data.items() if k not in ("stdout", "stderr")}
        if isinstance(data.get("files"), list):
            data["files"] = [{k: v for k, v in f.items() if k != "content"} for f in data["files"]]
        return data


# ------------------------------------------------------------------------------------------- images
def detect_image(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, GIF or WebP bytes (by magic number), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# --------------------------------------------------------------------------------------- text caps
def _read_more(task_hash: str | None, filename: str, key: str = "task_hash") -> str:
    if not task_hash:
        return "the full text was not kept"
    return f'read it all with ec2_get_files({key}="{task_hash}", filename="{filename}")'


def _cut_note(cut: int, total: int, unit: str, more: str) -> str:
    """The words between a head and a tail: how much is left out, and how to read it."""
    return f"\n[... {cut} of {total} {unit} cut here; {more} ...]\n"


def cap_text(text: str, limit: int, task_hash: str | None, filename: str, key: str = "task_hash") -> str:
    """``text`` with at most ``limit`` characters shown, cut by the runner's one rule (head and tail),
    around a note on what was cut. For texts the runner does not cut: a cell's results and traceback."""
    if len(text) <= limit:
        return text
    head, tail = runner.cut_text(text, limit)
    more = _read_more(task_hash, filename, key)
    return f"{head}{_cut_note(len(text) - len(head) - len(tail), len(text), 'characters', more)}{tail}"


def stream_text(result: ExecutionResult, stream: Literal["stdout", "stderr"]) -> str:
    """A run's stdout or stderr as a reader sees it: whole, or as the runner cut it, its head and tail
    around a note saying how many bytes are left out and how to read them all with ec2_get_files."""
    head, tail = result.head_and_tail(stream)
    if not getattr(result, f"{stream}_truncated"):
        return head
    omitted, total = getattr(result, f"{stream}_omitted_bytes"), getattr(result, f"{stream}_bytes")
    return f"{head}{_cut_note(omitted, total, 'bytes', _read_more(result.task_hash, '@' + stream))}{tail}"


# ------------------------------------------------------------------------------------------ outputs
#: What of a rich result the model reads as text, in order of preference (images go as image content).
TEXT_MIMES = ("text/markdown", "application/json", "text/html", "text/plain", "image/svg+xml")


def _cell_lines(result: ExecutionResult, limit: int) -> list[str]:
    """A stateful cell's own part: its number, what became of the state, its error and its results."""
    kept = {"new": "a fresh interpreter", "kept": "variables kept", "lost": "state LOST"}.get(
        result.state or ""
    )
    lines = [f"Cell: [{result.execution_count}] in the session's interpreter ({kept})"]
    if result.state_lost is not None:
        lines.append(f"State: {result.state_lost.message}")
    if result.error is not None:
        lines.append(f"Exception: {result.error.name}: {result.error.value}")
        lines.append(cap_text("".join(result.error.traceback).rstrip("\n"), limit // 4, None, ""))
    for index, item in enumerate(result.results):
        label = "Out" if item.main else "Display"
        mime = next((m for m in TEXT_MIMES if m in item.data), None)
        if mime is not None:
            text = cap_text(item.data[mime], limit // 2, result.task_hash, f"@display-{index}", "task_hash")
            lines.append(f"{label}[{index}] ({mime}):\n{text}")
        others = sorted(set(item.files) - {mime})
        for other in others:
            lines.append(f"{label}[{index}] also as {other}: ec2_get_files file {item.files[other]}")
    return lines


def render_execution(result: ExecutionResult, limit: int, images: list[Image] | None = None) -> Rendered:
    images = images or []
    if result.success:
        status = "success"
    elif result.termination_reason == "not_started":
        status = "not started"
    elif result.termination_reason == "exited":
        status = "failed (non-zero exit code)"
    else:
        status = f"failed ({result.termination_reason.replace('_', ' ')})"
    lines = [f"Status: {status}"]
    lines.append(f"Exit code: {result.return_code if result.return_code is not None else 'none'}")
    if result.error_message:
        lines.append(f"Error: {result.error_message}")
    lines.append(f"Task hash: {result.task_hash}")
    if result.session_id:
        lines.append(f"Session: {result.session_id}")
    lines.append(f"Runtime: {result.runtime}; wall time {result.execution_time:.2f}s")
    if result.files_created:
        lines.append("Files created: " + ", ".join(result.files_created))
        lines.append(
            f'(read them with ec2_get_files(task_hash="{result.task_hash}") or one by one with a filename)'
        )
    else:
        lines.append("Files created: none")
    if result.stateful:
        lines += _cell_lines(result, limit)
    for img in images:
        lines.append(f"Image {img.path} ({img.mime_type}, {len(img.data)} bytes) is attached.")
    stdout, stderr = stream_text(result, "stdout"), stream_text(result, "stderr")
    lines.append("--- stdout ---")
    lines.append(stdout.rstrip("\n") if stdout else "(empty)")
    lines.append("--- stderr ---")
    lines.append(stderr.rstrip("\n") if stderr else "(empty)")
    data = result.model_dump(mode="json")
    data["stdout"], data["stderr"] = stdout, stderr
    data["images_attached"] = [img.path for img in images]
    return Rendered("ec2_code_execution", "\n".join(lines), data, images, is_error=False)


def _render_file(
    task_hash: str, f: FileContent, limit: int, key: str = "task_hash"
) -> tuple[str, dict[str, Any], Image | None]:
    entry = f.model_dump(mode="json")
    data = f.data()  # base64 is decoded once: a page can be megabytes
    span = f"bytes {f.offset}-{f.offset + len(data)} of {f.size}"
    more = (
        f'\n[more follows: call ec2_get_files({key}="{task_hash}", filename="{f.path}", '
        f"offset={f.next_offset}) for the rest]"
        if f.truncated
        else ""
    )
    mime = detect_image(data) if f.offset == 0 and not f.truncated else None
    if mime is not None and len(data) <= MAX_IMAGE_BYTES:
        image = Image(f.path, mime, data)
        entry["content"] = f"[{mime} image attached as image content]"
        entry["encoding"] = "image"
        entry["mime_type"] = mime
        return f"== {f.path} ({f.size} bytes, {mime}) ==\n[image attached as image content]", entry, image
    if f.encoding == "utf-8":
        header = (
            f"== {f.path} ({f.size} bytes, text" + (f", {span}" if f.offset or f.truncated else "") + ") =="
        )
        body = cap_text(f.content, limit, task_hash, f.path, key)
        entry["content"] = body
        return f"{header}\n{body}{more}", entry, None
    b64 = f.content
    if len(b64) > limit:
        keep = limit // 4 * 4
        shown = keep * 3 // 4
        b64 = b64[:keep]
        more = (
            f'\n[base64 cut after {shown} bytes; call ec2_get_files({key}="{task_hash}", '
            f'filename="{f.path}", offset={f.offset + shown}) for the rest]'
        )
        entry["content"], entry["truncated"], entry["next_offset"] = b64, True, f.offset + shown
    header = f"== {f.path} ({f.size} bytes, {span}) ==\n{BINARY_MARKER}"
    return f"{header}\n{b64}{more}", entry, None


def render_files(result: GetFilesResult, limit: int) -> Rendered:
    key, whose = ("task_hash", result.task_hash) if result.task_hash else ("session_id", result.session_id)
    label = "Task hash" if result.task_hash else "Session"
    parts: list[str] = [f"{label}: {whose}; {len(result.files)} file(s)"]
    entries: list[dict[str, Any]] = []
    images: list[Image] = []
    for f in result.files:
        text, entry, image = _render_file(whose or "", f, limit, key)
        parts.append(text)
        entries.append(entry)
        if image is not None:
            images.append(image)
    for s in result.skipped:
        parts.append(f"(skipped {s.path}: {s.reason})")
    if result.not_shown:
        parts.append(
            f"({len(result.not_shown)} more file(s) not shown to keep this short: "
            f"{', '.join(result.not_shown[:50])}{' ...' if len(result.not_shown) > 50 else ''}; "
            f'read each with ec2_get_files({key}="{whose}", filename=...))'
        )
    if not result.files and not result.skipped and not result.not_shown:
        parts.append("The task has no files." if result.task_hash else "The session has no files.")
    data = {
        "task_hash": result.task_hash,
        "session_id": result.session_id,
        "files": entries,
        "skipped": [s.model_dump(mode="json") for s in result.skipped],
        "not_shown": result.not_shown,
    }
    return Rendered("ec2_get_files", "\n".join(parts), data, images)


def render_cleanup(result: CleanupResult) -> Rendered:
    if result.removed:
        items = ", ".join(f"{e.kind} {e.id}" for e in result.removed)
        text = f"Removed {len(result.removed)} entr{'y' if len(result.removed) == 1 else 'ies'}: {items}"
    else:
        text = "Nothing to remove."
    text += f" (policy {result.policy}, older than {result.hours} hours)"
    if result.skipped:
        kept = ", ".join(f"{e.kind} {e.id} ({e.reason})" for e in result.skipped)
        text += f". Kept, in use: {kept}; a later cleanup removes them."
    if result.unreached:
        missed = "; ".join(f"{u.target} ({u.error})" for u in result.unreached)
        text += f". NOT reached, nothing of theirs looked at or removed: {missed}; clean up again later."
    return Rendered("ec2_cleanup_tasks", text, result.model_dump(mode="json"))


def render_status(result: InstanceStatus) -> Rendered:
    lines = [
        f"Target {result.target} over {result.transport}: {'healthy' if result.healthy else 'NOT healthy'}"
    ]
    for part in result.parts:
        lines.append(f"- {part.name}: {'ok' if part.ok else 'FAILED'} - {part.message}")
    if result.runtimes:
        lines.append(
            "Runtimes: "
            + ", ".join(
                f"{r.name} ({r.version or 'available'})" if r.available else f"{r.name} (missing)"
                for r in result.runtimes
            )
        )
    if result.disk_free_mb is not None:
        lines.append(f"Disk free: {result.disk_free_mb} MB; isolation: {result.isolation}")
    if result.interpreters:
        busy = sum(i.busy for i in result.interpreters)
        memory = sum(i.memory_kb or 0 for i in result.interpreters) / 1024
        lines.append(
            f"Session interpreters: {len(result.interpreters)} up ({busy} busy), {memory:.0f} MB resident: "
            + ", ".join(i.session_id for i in result.interpreters[:20])
        )
    lines += [f"Warning: {w}" for w in result.warnings]
    return Rendered("ec2_instance_status", "\n".join(lines), result.model_dump(mode="json"))


def render_output(tool: str, output: BaseModel, limit: int, images: list[Image] | None = None) -> Rendered:
    """The model-facing form of any of the four tools' outputs."""
    if isinstance(output, ExecutionResult):
        return render_execution(output, limit, images)
    if isinstance(output, GetFilesResult):
        return render_files(output, limit)
    if isinstance(output, CleanupResult):
        return render_cleanup(output)
    if isinstance(output, InstanceStatus):
        return render_status(output)
    data = output.model_dump(mode="json")
    return Rendered(tool, cap_text(json.dumps(data, default=str), limit, None, ""), data)


# ------------------------------------------------------------------------------------------- errors
def _accepted(spec: ToolSpec | None) -> str:
    if spec is None:
        return ""
    fields = spec.input_model.model_fields
    if not fields:
        return f" {spec.name} takes no arguments: call it with {{}}."
    names = [f"{n} (required)" if f.is_required() else n for n, f in fields.items()]
    return f" Accepted arguments: {', '.join(names)}."


def _fix(err: Mapping[str, Any], spec: ToolSpec | None) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "input"
    kind = err.get("type", "")
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if kind == "missing":
        return f"`{loc}` is required but was not given: add it"
    if kind == "extra_forbidden":
        return f"`{loc}` is not an argument of this tool: remove it"
    if kind == "string_too_short" and loc == "code":
        return "`code` is empty: pass the complete program to run"
    got = err.get("input")
    shown = repr(got) if isinstance(got, str | int | float | bool) or got is None else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"`{loc}` = {shown} is invalid: {msg}"


def describe_validation_error(exc: ValidationError, spec: ToolSpec | None = None) -> str:
    """What was wrong with a call, field by field, and how to fix it."""
    problems = [_fix(e, spec) for e in exc.errors()]
    name = spec.name if spec is not None else exc.title
    return (
        f"Invalid arguments for {name}: "
        + "; ".join(problems)
        + "."
        + _accepted(spec)
        + " Correct the arguments and call the tool again."
    )


def render_error(exc: BaseException, spec: ToolSpec | None = None) -> Rendered:
    """A failed call as a tool result the model can act on (never an exception out of the agent run)."""
    tool = spec.name if spec is not None else "tool"
    if isinstance(exc, ValidationError):
        text, kind = describe_validation_error(exc, spec), "invalid_arguments"
    elif isinstance(exc, InvalidInputError):
        text = (
            f"Invalid arguments for {tool}: {exc}."
            + _accepted(spec)
            + " Correct the arguments and call again."
        )
        kind = "invalid_arguments"
    elif isinstance(exc, TaskNotFoundError):
        text = (
            f"Not found: {exc}. Use a task_hash exactly as ec2_code_execution returned it, and a filename "
            "from its files_created (or omit filename to list every file)."
        )
        kind = "not_found"
    elif isinstance(exc, ConfigError):
        text, kind = f"The sandbox is misconfigured: {exc}. This needs the operator, not a retry.", "config"
    elif isinstance(exc, TransportError):
        text = f"The sandbox target could not be reached: {exc}. Check it with ec2_instance_status."
        kind = "transport"
    elif isinstance(exc, SandboxError):
        text, kind = f"{tool} failed: {exc}", "sandbox"
    else:
        text, kind = f"{tool} failed unexpectedly: {type(exc).__name__}: {exc}", "internal"
    return Rendered(tool, text, {"error": kind, "message": text}, is_error=True)


# ---------------------------------------------------------------------------------------- the call
async def _result_images(sandbox: AsyncSandbox, result: ExecutionResult) -> list[Image]:
    """A cell's charts and pictures (PNG/JPEG results): inline where they came inline, else read back."""
    images: list[Image] = []
    for item in result.results:
        for mime in ("image/png", "image/jpeg"):
            if mime not in item.data and mime not in item.files:
                continue
            if len(images) >= MAX_ATTACHED_IMAGES:
                return images
            path = item.files.get(mime, mime)
            if mime in item.data:
                data = base64.b64decode(item.data[mime])
            else:
                try:
                    page = await sandbox.read_task_file(result.task_hash or "", path, 0, MAX_IMAGE_BYTES + 1)
                except SandboxError:
                    continue
                data = page.data()
            if detect_image(data) == mime and len(data) <= MAX_IMAGE_BYTES:
                images.append(Image(path, mime, data))
            break
    return images


async def _attach_images(sandbox: AsyncSandbox, result: ExecutionResult) -> list[Image]:
    images: list[Image] = await _result_images(sandbox, result) if result.results else []
    if not result.task_hash:
        return images
    for path in result.files_created:
        if len(images) >= MAX_ATTACHED_IMAGES:
            break
        if not path.lower().endswith(IMAGE_SUFFIXES):
            continue
        try:
            page = await sandbox.read_task_file(result.task_hash, path, 0, MAX_IMAGE_BYTES + 1)
        except SandboxError:
            continue
        data = page.data()
        mime = detect_image(data)
        if mime is not None and not page.truncated and len(data) <= MAX_IMAGE_BYTES:
            images.append(Image(path, mime, data))
    return images


async def _whole_images(sandbox: AsyncSandbox, result: GetFilesResult) -> GetFilesResult:
    """Images cut by the text budget are read whole (up to MAX_IMAGE_BYTES): they go out as images."""
    files = []
    for f in result.files:
        if (
            f.truncated
            and f.offset == 0
            and f.size <= MAX_IMAGE_BYTES
            and f.encoding == "base64"
            and detect_image(f.data())
        ):
            f = await sandbox.read_file(
                f.path, task_hash=result.task_hash, session_id=result.session_id, max_bytes=MAX_IMAGE_BYTES
            )
        files.append(f)
    return result.model_copy(update={"files": files})


async def call_tool(
    sandbox: AsyncSandbox,
    spec: ToolSpec,
    arguments: Mapping[str, Any] | BaseModel | None,
    *,
    attach_images: bool = True,
) -> Rendered:
    """Validate ``arguments`` with the core model, run the tool, and render the result or the error.

    Never raises for a bad call or a failed run: the model gets a result that says what happened.
    ``attach_images``: images an ec2_code_execution run created come back as :class:`Image` objects.
    """
    try:
        output = await spec.invoke(sandbox, arguments if arguments is not None else {})
        images: list[Image] = []
        if attach_images and isinstance(output, ExecutionResult) and (output.files_created or output.results):
            images = await _attach_images(sandbox, output)
        if isinstance(output, GetFilesResult):
            output = await _whole_images(sandbox, output)
    except (ValidationError, SandboxError) as exc:
        return render_error(exc, spec)
    except ValueError as exc:  # a check outside pydantic; still the caller's input
        return render_error(InvalidInputError(str(exc)), spec)
    except Exception as exc:  # a bug or an unexpected failure: the model is told, the run goes on
        log.exception("%s failed", spec.name)
        return render_error(exc, spec)
    return render_output(spec.name, output, sandbox.config.max_output_chars, images)


# --------------------------------------------------------------------------------- configuration
def sandbox_for(config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None) -> AsyncSandbox:
    """The :class:`AsyncSandbox` an adapter's ``config`` argument names.

    ``config`` may be a :class:`SandboxConfig`, an environment name (looked up by the configuration
    manager), an ``AsyncSandbox`` or ``Sandbox`` (shared as is), or None (the local default).
    """
    from .config import SandboxConfig
    from .sandbox import AsyncSandbox, Sandbox, load_config

    if isinstance(config, AsyncSandbox):
        return config
    if isinstance(config, Sandbox):
        return config.aio
    if config is None or isinstance(config, SandboxConfig):
        return AsyncSandbox(config)
    if isinstance(config, str):
        return AsyncSandbox(load_config(None, config))
    raise TypeError(
        "config must be a SandboxConfig, an environment name, an AsyncSandbox or Sandbox, or None; "
        f"got {type(config).__name__}"
    )
