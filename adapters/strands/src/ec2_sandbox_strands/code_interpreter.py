"""Strands' ``code_interpreter`` tool on an ec2-sandbox target: ``EC2CodeInterpreter``.

>>> from strands import Agent
>>> from ec2_sandbox_strands import EC2CodeInterpreter
>>> interpreter = EC2CodeInterpreter("production")  # a SandboxConfig, an environment name, a Sandbox, None
>>> agent = Agent(tools=[interpreter.code_interpreter])

A platform of ``strands_tools.code_interpreter.CodeInterpreter`` (the interface whose one other
implementation is Bedrock AgentCore): each code-interpreter session is an ec2-sandbox session of the same
name, so Python runs in the session's persistent interpreter on the target (variables survive from call to
call, ``clear_context`` restarts it), commands run in bash in the session's work dir, and files are read,
written, listed and removed there without running code, under the runner's symlink-proof path rules. Other
languages run statelessly in the session when the environment allows a runtime for them. Every failure
comes back as an ``error`` tool result the model can read; the agent run goes on. Isolation and limits are
the environment's own.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.util
import logging
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Concatenate, ParamSpec

from pydantic import ValidationError

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.errors import SandboxError, TaskNotFoundError
from ec2_sandbox.presentation import (
    BINARY_MARKER,
    MAX_ATTACHED_IMAGES,
    MAX_IMAGE_BYTES,
    TEXT_MIMES,
    cap_text,
    detect_image,
    sandbox_for,
)
from ec2_sandbox.schema import ExecutionResult, check_filename, check_session_id
from ec2_sandbox.session import Session


def _load_interface() -> None:
    """Make ``strands_tools.code_interpreter``'s interface importable without the AgentCore client.

    The package's ``__init__`` imports its AgentCore platform, which needs ``bedrock-agentcore`` (the extra
    ``agent-core-code-interpreter`` of strands-agents-tools, not needed here). When that is what fails, the
    package is registered without running its ``__init__``: its interface modules (``code_interpreter``,
    ``models``) load on their own, and asking it for ``AgentCoreCodeInterpreter`` still imports the real one
    (raising bedrock-agentcore's own ImportError while that is missing).
    """
    name = "strands_tools.code_interpreter"
    try:
        importlib.import_module(name)
        return
    except ImportError as exc:
        if not (exc.name or "").startswith("bedrock_agentcore"):
            raise
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package")
    package = importlib.util.module_from_spec(spec)

    def agent_core(attr: str) -> Any:
        if attr == "AgentCoreCodeInterpreter":
            return importlib.import_module(f"{name}.agent_core_code_interpreter").AgentCoreCodeInterpreter
        if attr == "CodeInterpreter":
            return importlib.import_module(f"{name}.code_interpreter").CodeInterpreter
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    # A module's __getattr__ (PEP 562) is set on the module itself, which mypy flags as a method assignment.
    package.__getattr__ = agent_core  # type: ignore[method-assign]
    sys.modules[name] = package


try:
    _load_interface()
    from strands_tools.code_interpreter.code_interpreter import CodeInterpreter
    from strands_tools.code_interpreter.models import (
        ExecuteCodeAction,
        ExecuteCommandAction,
        InitSessionAction,
        LanguageType,
        ListFilesAction,
        ReadFilesAction,
        RemoveFilesAction,
        WriteFilesAction,
    )
except ImportError as exc:  # the extra is optional: say how to get it rather than a bare ModuleNotFoundError
    raise ImportError(
        "EC2CodeInterpreter needs strands-agents-tools: pip install 'ec2-sandbox-strands[code-interpreter]'"
    ) from exc

__all__ = ["EC2CodeInterpreter"]

log = logging.getLogger(__name__)

ToolResult = dict[str, Any]
P = ParamSpec("P")

#: Runtimes that can run each non-Python language statelessly, in order of preference. Python never runs
#: this way: it goes to the session's persistent interpreter.
LANGUAGE_RUNTIMES: dict[LanguageType, tuple[str, ...]] = {
    LanguageType.JAVASCRIPT: ("node", "nodejs", "javascript"),
    LanguageType.TYPESCRIPT: ("typescript", "tsx", "ts-node"),
}

# The runner's note on output it cut names the Python API; this tool's model can only rerun and read files.
_CORE_NOTE = re.compile(
    r"\[\.\.\. (\d+) bytes of (\d+) omitted; read the full output with get_task_files\([^)]*\) \.\.\.\]"
)


def _error(message: str) -> ToolResult:
    return {"status": "error", "content": [{"text": message}]}


def _guarded(
    method: Callable[Concatenate[EC2CodeInterpreter, P], ToolResult],
) -> Callable[Concatenate[EC2CodeInterpreter, P], ToolResult]:
    """Turn every failure of an action into an ``error`` result: an exception would reach Strands as a bare
    "Error: ..." text at best, and a direct call (``interpreter.execute_code(...)``) would raise."""

    @wraps(method)
    def guarded(self: EC2CodeInterpreter, *args: P.args, **kwargs: P.kwargs) -> ToolResult:
        try:
            return method(self, *args, **kwargs)
        except (SandboxError, ValidationError, ValueError) as exc:  # the caller's input or the target's word
            return _error(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or an unexpected failure: the model is told, the run goes on
            log.exception("code_interpreter action %s failed", method.__name__)
            return _error(f"Internal error ({type(exc).__name__}): {exc}")

    return guarded


def _check_session_name(name: str) -> None:
    try:
        check_session_id(name)
    except ValueError as exc:
        raise ValueError(f"session_name {name!r}: {exc}") from None


@dataclass
class SessionInfo:
    """A session this platform instance opened (or reattached to)."""

    name: str
    description: str
    reattached: bool
    working_directory: str | None = None


def _sync_facade(config: SandboxConfig | AsyncSandbox | Sandbox | str | None) -> tuple[Sandbox, bool]:
    """The :class:`Sandbox` whose own loop thread runs the actions (Strands calls sync tools on worker
    threads, inside or outside an event loop), and whether this platform made it (and so may close it)."""
    if isinstance(config, Sandbox):
        return config, False
    owned = not isinstance(config, AsyncSandbox)
    sandbox = sandbox_for(config)
    facade = Sandbox(sandbox.config, registry=sandbox.registry)
    facade.aio = sandbox  # the caller's AsyncSandbox itself: one transport, one set of sessions
    return facade, owned


class EC2CodeInterpreter(CodeInterpreter):
    """The ``code_interpreter`` tool for Strands, running in ec2-sandbox sessions.

    ``config``: a :class:`SandboxConfig`, an environment name from the configuration file, a
    ``Sandbox``/``AsyncSandbox`` (shared, never closed here), or None for the local default.
    ``session_name``: the session actions without a ``session_name`` use (default: a fresh random one).
    ``auto_create``: open a session on its first use; when False, an action on a session that neither this
    instance opened nor the target holds is an error. ``persist_sessions``: when False,
    :meth:`cleanup_platform` stops the interpreters of the sessions this instance used (their files stay
    until the environment's cleanup). ``timeout``: seconds per call, at most the environment's
    ``max_execution_time`` (its default).
    """

    def __init__(
        self,
        config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
        *,
        session_name: str | None = None,
        auto_create: bool = True,
        persist_sessions: bool = True,
        timeout: float | None = None,
    ) -> None:
        self._config = config
        self.sandbox, self._owns_sandbox = _sync_facade(config)
        if session_name is not None:
            _check_session_name(session_name)
        self.default_session = session_name or f"session-{uuid.uuid4().hex[:12]}"
        self.auto_create = auto_create
        self.persist_sessions = persist_sessions
        self.timeout = timeout
        self._sessions: dict[str, SessionInfo] = {}
        # Last: the base class reads get_supported_languages() to write the tool's description.
        super().__init__()

    # ---------------------------------------------------------------------------------- for the app
    def session(self, session_name: str | None = None) -> Session:
        """The core session behind ``session_name`` (default: this instance's default session), for the
        application's own use: files written with its ``write_files`` and read with ``read_bytes`` move in
        and out without passing through the model."""
        return self.sandbox.session(session_name or self.default_session)

    # ------------------------------------------------------------------------------------ lifecycle
    def start_platform(self) -> None:
        """Nothing to start: the target is reached by the first action."""

    def cleanup_platform(self) -> None:
        """Stop this instance's interpreters when sessions do not persist; close a sandbox made here."""
        if sys.is_finalizing():
            # Called from __del__ at interpreter exit: the sandbox's loop thread may be gone, and waiting on
            # it would hang the exit. The OS closes the connection; an interpreter left behind idles out on
            # the target after session_idle_timeout.
            return
        if not self.persist_sessions:
            for name in list(self._sessions):
                try:
                    self.sandbox.session(name).close()
                except Exception as exc:  # one unreachable session must not keep the others running
                    log.debug("closing session %s skipped: %s", name, exc)
            self._sessions.clear()
        if self._owns_sandbox:
            # Its loop and connection stop; a fresh one (nothing connects until used) serves the next
            # action, which Strands may send after a cleanup.
            self.sandbox.close()
            self.sandbox, _ = _sync_facade(self._config)

    # ------------------------------------------------------------------------------------- sessions
    @_guarded
    def init_session(self, action: InitSessionAction) -> ToolResult:
        name = action.session_name or self.default_session
        if name in self._sessions:
            return _error(f"Session '{name}' already exists")
        info = self._open(name, action.description)
        return {
            "status": "success",
            "content": [
                {
                    "json": {
                        "sessionName": name,
                        "description": info.description,
                        "sessionId": name,
                        "reattached": info.reattached,
                        "workingDirectory": info.working_directory,
                    }
                }
            ],
        }

    def _open(self, name: str, description: str) -> SessionInfo:
        """Open ``name`` on the target, learning whether it already held the session (files or a live
        interpreter): then this is a reattach, and the state the session had is still there."""
        _check_session_name(name)
        session = self.sandbox.session(name)
        listing = self.sandbox.run(self.sandbox.aio.list_files(session_id=name))
        live = bool(session.status().get("live"))
        info = SessionInfo(
            name=name,
            description=description,
            reattached=bool(listing.get("exists")) or live,
            working_directory=listing.get("working_directory"),
        )
        self._sessions[name] = info
        return info

    def _ensure_session(self, session_name: str | None) -> Session:
        name = session_name or self.default_session
        if name not in self._sessions:
            info = self._open(name, "Auto-initialized session")
            if not self.auto_create and not info.reattached:
                del self._sessions[name]
                raise ValueError(f"Session '{name}' not found. Create it first using initSession.")
        return self.sandbox.session(name)

    def list_local_sessions(self) -> ToolResult:
        sessions = [
            {
                "sessionName": info.name,
                "description": info.description,
                "sessionId": info.name,
                "reattached": info.reattached,
            }
            for info in self._sessions.values()
        ]
        return {
            "status": "success",
            "content": [{"json": {"sessions": sessions, "totalSessions": len(sessions)}}],
        }

    def get_supported_languages(self) -> list[LanguageType]:
        """Python when the environment allows a Python runtime (the persistent interpreter), and every other
        language some allowed runtime runs."""
        allowed = set(self.sandbox.aio.allowed_runtimes())
        languages = [LanguageType.PYTHON] if allowed & {"python3", "python"} else []
        return languages + [lang for lang, names in LANGUAGE_RUNTIMES.items() if allowed & set(names)]

    # ------------------------------------------------------------------------------------ execution
    @_guarded
    def execute_code(self, action: ExecuteCodeAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        if action.language == LanguageType.PYTHON:
            if action.clear_context:
                session.restart()
            result = session.run_code(action.code, timeout=self.timeout)
        else:
            names = LANGUAGE_RUNTIMES[action.language]
            allowed = self.sandbox.aio.allowed_runtimes()
            runtime = next((name for name in names if name in allowed), None)
            if runtime is None:
                supported = ", ".join(lang.value for lang in self.get_supported_languages()) or "none"
                return _error(
                    f"Language {action.language.value!r} is not available in this environment "
                    f"(no allowed runtime among {', '.join(names)}); supported: {supported}"
                )
            # No persistent interpreter for it: one fresh process in the session's work dir, so files stay
            # and variables do not (the result says so).
            result = self.sandbox.run(
                self.sandbox.aio.execute_code(action.code, runtime, session.id, timeout=self.timeout)
            )
        return self._execution_result(result, session.id)

    @_guarded
    def execute_command(self, action: ExecuteCommandAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        result = session.run_command(action.command, timeout=self.timeout)
        return self._execution_result(result, session.id)

    def _execution_result(self, result: ExecutionResult, session: str) -> ToolResult:
        limit = self.sandbox.config.max_output_chars
        lines: list[str] = []
        if result.stateful:
            state = {"new": "a fresh interpreter", "kept": "variables kept", "lost": "earlier state LOST"}
            kept = state.get(result.state or "", "?")
            lines.append(f"[cell {result.execution_count} in session '{session}': {kept}]")
            if result.state_lost is not None:
                lines.append(f"State: {result.state_lost.message}")
        elif result.runtime not in ("bash", None):
            lines.append(
                f"[{result.runtime}, run statelessly in session '{session}': variables do not persist]"
            )
        if not result.success and result.error is None:
            why = result.error_message or result.termination_reason
            lines.append(f"Failed: {why} (exit code {result.return_code})")
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text:
                lines.append(f"--- {name} ---\n{self._stream(text, limit).rstrip()}")
        images: list[dict[str, Any]] = []
        for index, item in enumerate(result.results):
            label = "Out" if item.main else "Display"
            mime = next((m for m in TEXT_MIMES if m in item.data), None)
            image = self._result_image(result, index, item.data, item.files)
            if image is not None and len(images) < MAX_ATTACHED_IMAGES:
                images.append(image)
                lines.append(f"{label}[{index}]: {image['image']['format']} image attached")
            elif mime is not None:
                lines.append(f"{label}[{index}]:\n{cap_text(item.data[mime], limit // 2, None, '')}")
        if result.error is not None:
            traceback = cap_text("".join(result.error.traceback).rstrip("\n"), limit // 2, None, "")
            lines.append(f"{result.error.name}: {result.error.value}\n{traceback}")
        if result.files_created:
            lines.append("Files created: " + ", ".join(result.files_created))
        if len(lines) == (1 if result.stateful else 0):
            lines.append("(no output)")
        data: dict[str, Any] = {
            "sessionName": session,
            "exitCode": result.return_code,
            "executionTime": result.execution_time,
            "terminationReason": result.termination_reason,
            "executionCount": result.execution_count,
            "state": result.state,
            "filesCreated": result.files_created,
            "stdoutBytes": result.stdout_bytes,
            "stderrBytes": result.stderr_bytes,
        }
        if result.error is not None:
            data["error"] = {"name": result.error.name, "value": result.error.value}
        return {
            "status": "success" if result.success else "error",
            "content": [{"text": "\n".join(lines)}, {"json": data}, *images],
        }

    @staticmethod
    def _stream(text: str, limit: int) -> str:
        def note(match: re.Match[str]) -> str:
            return (
                f"[... {match.group(1)} of {match.group(2)} bytes cut here; to see them, write the output to "
                "a file and read parts of it with executeCommand (head, tail, sed -n) ...]"
            )

        if _CORE_NOTE.search(text):
            return _CORE_NOTE.sub(note, text, count=1)
        return cap_text(text, limit, None, "")

    def _result_image(
        self, result: ExecutionResult, index: int, data: dict[str, str], files: dict[str, str]
    ) -> dict[str, Any] | None:
        """A rich result's PNG/JPEG as Strands image content: inline when it came inline, else read from the
        cell's record (over SSM, large images travel only that way)."""
        for mime in ("image/png", "image/jpeg"):
            raw: bytes | None = None
            if mime in data:
                raw = base64.b64decode(data[mime])
            elif mime in files and result.task_hash:
                buffer = bytearray()
                self.sandbox.run(
                    self.sandbox.aio.download_task_file(
                        result.task_hash, files[mime], buffer.extend, max_bytes=MAX_IMAGE_BYTES + 1
                    )
                )
                raw = bytes(buffer)
            if raw is not None and len(raw) <= MAX_IMAGE_BYTES and detect_image(raw) == mime:
                return {"image": {"format": mime.split("/")[1], "source": {"bytes": raw}}}
        return None

    # ---------------------------------------------------------------------------------------- files
    def _relative(self, session: str, path: str) -> str:
        """A path as the runner takes it: relative to the session's work dir. The model often writes
        './x' or the work dir's absolute path (it sees it in ``pwd``); anything else absolute, or with '..',
        is refused by the runner's own rules, never resolved here."""
        given = path
        work_dir = self._sessions[session].working_directory if session in self._sessions else None
        if work_dir and (path == work_dir or path.startswith(work_dir.rstrip("/") + "/")):
            path = path[len(work_dir) :]
            path = path.lstrip("/")
        while path.startswith("./"):
            path = path[2:]
        path = path.rstrip("/") if path not in ("", "/") else path
        if path in ("", "."):
            return ""
        try:
            check_filename(path)
        except ValueError as exc:
            raise ValueError(f"path {given!r}: {exc}") from None
        return path

    def _paths(self, session: str, given: list[str], verb: str) -> list[str]:
        if not given:
            raise ValueError(f"paths: give at least one file to {verb}")
        return [self._relative(session, path) for path in given]

    @_guarded
    def write_files(self, action: WriteFilesAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        files: dict[str, str | bytes] = {}
        for item in action.content:
            path = self._relative(session.id, item.path)
            if not path:
                return _error(f"path {item.path!r}: names the work dir itself, not a file")
            if item.blob is not None:
                # The field is documented as base64 (and a model can only send text): decoded strictly, so
                # that text which is not base64 is refused rather than written as garbage.
                try:
                    files[path] = base64.b64decode(item.blob, validate=True)
                except (binascii.Error, ValueError):
                    return _error(f"path {item.path!r}: blob is not valid base64")
            else:
                files[path] = item.text or ""
        written = session.write_files(files)
        sizes = {
            path: len(content.encode() if isinstance(content, str) else content)
            for path, content in files.items()
        }
        return {
            "status": "success",
            "content": [
                {
                    "text": f"Wrote {len(written)} file(s): "
                    + ", ".join(f"{p} ({sizes[p]} bytes)" for p in files)
                },
                {
                    "json": {
                        "sessionName": session.id,
                        "written": [{"path": p, "size": sizes[p]} for p in files],
                    }
                },
            ],
        }

    @_guarded
    def read_files(self, action: ReadFilesAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        paths = self._paths(session.id, action.paths, "read")
        budget = self.sandbox.config.max_output_chars
        content: list[dict[str, Any]] = []
        failed = False
        for given, path in zip(action.paths, paths, strict=True):
            if not path:
                content.append({"text": f"== {given} ==\nerror: that is the work dir itself; use listFiles"})
                failed = True
                continue
            try:
                page = session.read_file(path, max_bytes=max(256, budget))
            except (TaskNotFoundError, SandboxError) as exc:
                message = (
                    f"no such file in session '{session.id}'"
                    if isinstance(exc, TaskNotFoundError)
                    else str(exc)
                )
                content.append({"text": f"== {given} ==\nerror: {message}"})
                failed = True
                continue
            data = page.data()
            mime = detect_image(data) if not page.truncated else None
            attached = sum("image" in block for block in content)
            if mime is not None and len(data) <= MAX_IMAGE_BYTES and attached < MAX_ATTACHED_IMAGES:
                content.append({"text": f"== {path} ({page.size} bytes, {mime}) ==\n[image attached]"})
                content.append({"image": {"format": mime.split("/")[1], "source": {"bytes": data}}})
                continue
            more = (
                f"\n[... {page.size - len(data)} more bytes; read them with executeCommand "
                f"(e.g. tail -c +{len(data) + 1} {path} | head -c {budget}) ...]"
                if page.truncated
                else ""
            )
            body = page.content if page.encoding == "utf-8" else f"{BINARY_MARKER}\n{page.content}"
            content.append({"text": f"== {path} ({page.size} bytes) ==\n{body}{more}"})
            budget = max(0, budget - len(page.content))
        return {"status": "error" if failed else "success", "content": content}

    @_guarded
    def list_files(self, action: ListFilesAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        where = self._relative(session.id, action.path)
        listing = self.sandbox.run(self.sandbox.aio.list_files(session_id=session.id))
        prefix = f"{where}/" if where else ""
        entries: dict[str, dict[str, Any]] = {}
        is_file = False
        for entry in listing["files"]:
            if entry["path"] == where:
                is_file = True
                entries[entry["path"]] = {"name": entry["path"], "type": "file", "size": entry["size"]}
            elif entry["path"].startswith(prefix):
                # The runner lists regular files recursively; a directory shows as one entry, with its size
                # the sum of the files under it, as a listing of this one level would show it.
                child, _, rest = entry["path"][len(prefix) :].partition("/")
                kind = "directory" if rest else "file"
                seen = entries.setdefault(child, {"name": child, "type": kind, "size": 0})
                seen["size"] += entry["size"]
        for skipped in listing.get("skipped", []):
            if skipped["path"].startswith(prefix) and "/" not in skipped["path"][len(prefix) :]:
                name = skipped["path"][len(prefix) :]
                entries[name] = {"name": name, "type": "skipped", "reason": skipped["reason"]}
        if where and not entries and not is_file:
            return _error(
                f"path {action.path!r}: no such file or directory (with files) in session '{session.id}'"
            )
        rows = sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["name"]))
        lines = [f"{where or '.'}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}"]
        for row in rows:
            if row["type"] == "skipped":
                lines.append(f"  {row['name']}  ({row['reason']})")
            else:
                slash = "/" if row["type"] == "directory" else ""
                lines.append(f"  {row['name']}{slash}  {row['size']} bytes")
        return {
            "status": "success",
            "content": [
                {"text": "\n".join(lines)},
                {"json": {"sessionName": session.id, "path": where or ".", "entries": rows}},
            ],
        }

    @_guarded
    def remove_files(self, action: RemoveFilesAction) -> ToolResult:
        session = self._ensure_session(action.session_name)
        paths = self._paths(session.id, action.paths, "remove")
        if "" in paths:
            return _error("paths: refusing to remove the work dir itself; name what is in it")
        removed = session.remove_files(*paths)
        missing = [path for path in paths if path not in removed]
        text = f"Removed {len(removed)} path(s)" + (": " + ", ".join(removed) if removed else "")
        if missing:
            text += f"; not found: {', '.join(missing)}"
        return {
            "status": "error" if missing else "success",
            "content": [
                {"text": text},
                {"json": {"sessionName": session.id, "removed": removed, "notFound": missing}},
            ],
        }
