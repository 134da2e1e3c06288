"""Sandbox: the Python API.

``AsyncSandbox`` is the real implementation; ``Sandbox`` wraps it for synchronous code.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

from pydantic import ValidationError

from . import protocol
from .cleanup import Inventory
from .config import SandboxConfig
from .errors import ConfigError, InvalidInputError, TransportError
from .plugins import Registry, get_registry
from .protocol import RunnerRefusal
from .runtimes import Runtime
from .schema import (
    CellError,
    CleanupResult,
    ExecutionResult,
    FileContent,
    GetFilesResult,
    InstanceStatus,
    LiveInterpreter,
    RemovedEntry,
    RichResult,
    RunRequest,
    RuntimeStatus,
    SkippedEntry,
    SkippedFile,
    StateLoss,
    StatusPart,
    UnreachedTarget,
    check_file_to_read,
    check_session_id,
    check_task_hash,
)
from .session import AsyncSession, Session
from .transports.base import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")
OutputCallback = Callable[[str, bytes], None]
#: ec2_get_files without a filename shows at least this many files, however small the output budget.
FILES_ALWAYS_SHOWN = 10
#: Seconds a transport may take beyond the run's own limit before the call is abandoned.
TRANSPORT_MARGIN = 30.0
FileData = str | bytes


def load_config(path: str | Path | None, environment: str, **overrides: Any) -> SandboxConfig:
    """Environment ``environment`` from the config file at ``path`` (or the default one) over its preset and
    the EC2_SANDBOX_* variables; ``overrides`` win over every layer."""
    from .config_manager import ConfigManager

    return ConfigManager(path).get_config(environment, **overrides)


def _field_error(field: str, check: Callable[[Any], Any], value: Any) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise InvalidInputError(f"{field}: {exc}") from None


class AsyncSandbox:
    """Runs code on the configured target. Safe to share between concurrent tasks."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        transport: Transport | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config or SandboxConfig()
        self.registry = registry or get_registry()
        self._transport = transport
        self._transport_lock = threading.Lock()

    @classmethod
    def from_config(cls, path: str | Path | None = None, environment: str = "default") -> AsyncSandbox:
        """A sandbox for ``environment`` of the configuration file at ``path`` (or a preset)."""
        return cls(load_config(path, environment))

    # ------------------------------------------------------------------ plumbing
    @property
    def transport(self) -> Transport:
        with self._transport_lock:
            if self._transport is None:
                name = self.config.resolved_transport
                factory = self.registry.transports.get(name)
                if factory is None:
                    known = ", ".join(sorted(self.registry.transports)) or "none"
                    raise ConfigError(
                        f"transport {name!r} is not available (registered: {known}); "
                        "install the plugin that provides it or choose another transport"
                    )
                self._transport = factory(self.config)
            return self._transport

    def allowed_runtimes(self) -> list[str]:
        registered = self.registry.runtimes
        if self.config.allowed_runtimes is None:
            return sorted(registered)
        return [name for name in self.config.allowed_runtimes if name in registered]

    def default_runtime(self) -> str:
        """python3 where allowed, else the environment's first allowed runtime."""
        allowed = self.allowed_runtimes()
        return "python3" if "python3" in allowed or not allowed else allowed[0]

    def runtime(self, name: str) -> Runtime:
        allowed = self.allowed_runtimes()
        if name not in allowed:
            why = "is not allowed in this environment" if name in self.registry.runtimes else "is unknown"
            raise InvalidInputError(f"runtime: {name!r} {why}; allowed runtimes: {', '.join(allowed)}")
        return self.registry.runtimes[name]

    def _page_bytes(self) -> int:
        """Bytes of file content one runner call may return, given the channel's output cap."""
        cap = self.transport.max_output_chars
        if cap is None:
            return 8 << 20
        return max(1024, (cap - 1000) * 3 // 4)

    async def _call(self, op: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        req = protocol.request(op, self.config.base_sandbox_dir, **fields)
        return await protocol.call(self.transport, req, timeout=timeout)

    # ------------------------------------------------------------------ running code
    async def execute_code(
        self,
        code: str,
        runtime: str | None = None,
        session_id: str | None = None,
        files: Mapping[str, FileData] | None = None,
        env_vars: Mapping[str, str] | None = None,
        create_filesystem: bool = True,
        timeout: float | None = None,
        *,
        stateful: bool = False,
        on_output: OutputCallback | None = None,
        on_start: Callable[[str], object] | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and return its result; a failing or killed program is a result, not an exception.

        ``runtime``: None is the environment's default (:meth:`default_runtime`). ``stateful``: run it as
        a cell of ``session_id``'s persistent interpreter (Python), whose variables stay for the session's
        next stateful call (see :meth:`session`).

        Raises :class:`InvalidInputError` before anything runs when an argument breaks a rule.
        ``on_output(stream, chunk)`` receives output while the run goes on, where the transport streams.
        ``on_start(task_hash)`` is called just before the run is sent: a caller that gives up (Ctrl-C) can
        still name the run whose output and files stay on the target.
        """
        # The arguments are named as the request's fields: the model checks them all, here and nowhere else.
        arguments = {name: value for name, value in locals().items() if name in RunRequest.model_fields}
        return await self.execute(run_request(**arguments), on_output=on_output, on_start=on_start)

    async def execute(
        self,
        request: RunRequest,
        *,
        on_output: OutputCallback | None = None,
        on_start: Callable[[str], object] | None = None,
    ) -> ExecutionResult:
        """Run a :class:`RunRequest` already checked by its model (the Python API's and the tool's one
        path): only the rules of this environment are checked here, once."""
        runtime = request.runtime_or(self.default_runtime())
        rt = self.runtime(runtime)
        if request.stateful and rt.warm_start != "python":
            raise InvalidInputError(
                f"runtime: the persistent interpreter runs Python; {runtime!r} runs only statelessly"
            )
        limit = self.config.max_execution_time
        timeout = limit if request.timeout is None else request.timeout
        if not 1 <= timeout <= limit:
            raise InvalidInputError(
                f"timeout: {timeout!r} s must be between 1 and this environment's max_execution_time "
                f"({limit}), in seconds"
            )
        session_id, stateful = request.session_id, request.stateful
        file_entries = [  # bytes until the wire (protocol.call)
            {"path": name, "data": content.encode("utf-8") if isinstance(content, str) else content}
            for name, content in (request.files or {}).items()
        ]
        task_hash = uuid.uuid4().hex
        stream = on_output is not None and self.transport.supports_streaming
        req = protocol.request(
            "cell" if stateful else "run",
            self.config.base_sandbox_dir,
            task_hash=task_hash,
            session_id=session_id,
            ephemeral=not request.create_filesystem,
            runtime=rt.to_runner(),
            code_b64=protocol.b64(request.code.encode("utf-8")),
            files=file_entries,
            env=request.env_vars or {},
            limits={
                "memory_mb": self.config.max_memory_mb,
                "file_size_mb": self.config.max_file_size_mb,
                "open_files": self.config.max_open_files,
                "disk_mb": self.config.max_disk_mb,
                "processes": self.config.max_processes,
                "cpu_seconds": int(timeout) + 5,
            },
            timeout=timeout,
            inline_chars=self.config.max_output_chars,
            max_envelope_chars=self.transport.max_output_chars,
            isolation=self.config.isolation,
            syscall_filter=self.config.syscall_filter,
            disk_reserve_mb=self.config.disk_reserve_mb,
            network=self.config.network,
            stream=stream,
            warm=self.config.warm_start and self.transport.supports_warm_start,
            idle_timeout=self.config.session_idle_timeout,
        )

        def on_event(event: dict[str, Any]) -> None:
            if on_output is not None and event.get("stream") in ("stdout", "stderr"):
                on_output(event["stream"], base64.b64decode(event["b64"]))

        log.debug("run %s: runtime=%s session=%s timeout=%s", task_hash, runtime, session_id, timeout)
        if on_start is not None:
            on_start(task_hash)
        try:
            raw = await protocol.call(
                self.transport,
                req,
                # A cell may wait its turn behind the session's earlier ones for as long as its own time.
                timeout=(2 * timeout if stateful else timeout) + TRANSPORT_MARGIN,
                on_event=on_event if stream else None,
            )
        except RunnerRefusal as exc:
            return ExecutionResult(
                success=False,
                task_hash=task_hash,
                session_id=session_id,
                runtime=runtime,
                error_message=str(exc),
                termination_reason="not_started",
                transport=self.transport.name,
            )
        result = self._result(raw, runtime)
        log.debug(
            "run %s ended: %s, exit %s, %.3fs",
            task_hash,
            result.termination_reason,
            result.return_code,
            result.execution_time,
        )
        return result

    def _result(self, raw: dict[str, Any], runtime: str) -> ExecutionResult:
        out, err = raw["stdout"], raw["stderr"]
        return ExecutionResult(
            success=raw["success"],
            # The runner's cut travels as fields: head and tail joined, with nothing written between.
            stdout=out["text"],
            stderr=err["text"],
            return_code=raw["return_code"],
            execution_time=raw["execution_time"],
            task_hash=raw["task_hash"],
            session_id=raw["session_id"],
            runtime=runtime,
            working_directory=raw["working_directory"],
            files_created=raw["files_created"],
            error_message=raw["error_message"],
            timed_out=raw["timed_out"],
            termination_reason=raw["termination_reason"],
            signal=raw["signal"],
            stdout_truncated=out["truncated"],
            stderr_truncated=err["truncated"],
            stdout_bytes=out["bytes"],
            stderr_bytes=err["bytes"],
            stdout_head_chars=out.get("head_chars") if out["truncated"] else None,
            stderr_head_chars=err.get("head_chars") if err["truncated"] else None,
            stdout_omitted_bytes=out["omitted_bytes"],
            stderr_omitted_bytes=err["omitted_bytes"],
            cpu_time=raw["cpu_time"],
            peak_memory_mb=round(raw["peak_memory_kb"] / 1024, 1),
            isolation=raw["isolation"],
            limits_enforced=raw["limits_enforced"],
            warnings=raw.get("warnings", []),
            transport=self.transport.name,
            stateful=raw.get("stateful", False),
            execution_count=raw.get("execution_count"),
            results=[RichResult(**r) for r in raw.get("rich_results") or []],
            error=CellError(**raw["cell_error"]) if raw.get("cell_error") else None,
            state=raw.get("state"),
            state_lost=StateLoss(**raw["state_lost"]) if raw.get("state_lost") else None,
        )

    # ------------------------------------------------------------------ files
    async def download_file(
        self,
        filename: str,
        sink: Callable[[bytes], object],
        *,
        task_hash: str | None = None,
        session_id: str | None = None,
        offset: int = 0,
        max_bytes: int | None = None,
    ) -> tuple[int, int]:
        """Stream one file of a task (or its ``@stdout``/``@stderr``/``@display-N.EXT``) or of a session's
        work dir into ``sink``, page by page.

        Only one page is held at a time, so a file of any size fits in memory (``sink`` may be a file's
        ``write``). Returns ``(bytes written, full size of the file)``.
        """
        owner = _file_owner(task_hash, session_id)
        _field_error("filename", check_file_to_read, filename)
        if offset < 0:
            raise InvalidInputError("offset: must not be negative")
        want = max_bytes if max_bytes is not None else 1 << 62

        async def fetch(position: int, length: int) -> tuple[bytes, int]:
            page = await self._call("read", **owner, path=filename, offset=position, length=length)
            return protocol.page_data(page), page["size"]

        async def bulk(position: int, length: int) -> tuple[int, int | None]:
            req = protocol.request(
                "read", self.config.base_sandbox_dir, **owner, path=filename, offset=position, length=length
            )
            return await self.transport.bulk_read(req, sink, timeout=60.0)

        page_bytes = self._page_bytes()
        after = self.transport.bulk_read_after
        return await protocol.read_pages(
            fetch,
            offset,
            want,
            first_page=max(page_bytes, self.transport.read_page_bytes or 0),
            min_page=page_bytes,
            max_page=max(page_bytes, self.transport.read_page_bytes or 0),
            window=self.transport.read_window,
            sink=sink,
            bulk=bulk if after is not None else None,
            bulk_after=after,
        )

    async def download_task_file(
        self,
        task_hash: str,
        filename: str,
        sink: Callable[[bytes], object],
        offset: int = 0,
        max_bytes: int | None = None,
    ) -> tuple[int, int]:
        """One file of a task (or ``@stdout``/``@stderr``) into ``sink`` (see :meth:`download_file`)."""
        return await self.download_file(
            filename, sink, task_hash=task_hash, offset=offset, max_bytes=max_bytes
        )

    async def read_file(
        self,
        filename: str,
        *,
        task_hash: str | None = None,
        session_id: str | None = None,
        offset: int = 0,
        max_bytes: int | None = None,
    ) -> FileContent:
        """One file of a task or a session, from ``offset``, at most ``max_bytes``."""
        buffer = bytearray()
        _, size = await self.download_file(
            filename,
            buffer.extend,
            task_hash=task_hash,
            session_id=session_id,
            offset=offset,
            max_bytes=max_bytes,
        )
        return _file_content(filename, bytes(buffer), size, offset)

    async def read_task_file(
        self, task_hash: str, filename: str, offset: int = 0, max_bytes: int | None = None
    ) -> FileContent:
        """One file of a task (or ``@stdout``/``@stderr``), from ``offset``, at most ``max_bytes``."""
        return await self.read_file(filename, task_hash=task_hash, offset=offset, max_bytes=max_bytes)

    async def _file_value(self, task_hash: str, filename: str) -> FileData:
        buffer = bytearray()
        await self.download_task_file(task_hash, filename, buffer.extend)
        try:
            return buffer.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(buffer)

    async def list_files(
        self, *, task_hash: str | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """The files of a task's or a session's work dir (``files``: path and size), and what was skipped."""
        return await self._call("list", **_file_owner(task_hash, session_id))

    async def list_task_files(self, task_hash: str) -> dict[str, Any]:
        return await self.list_files(task_hash=task_hash)

    async def get_task_files(
        self, task_hash: str, filename: str | None = None
    ) -> dict[str, FileData] | FileData:
        """Every file of a task as ``{path: content}``, or one file's content.

        Text comes back as ``str``; anything that is not valid UTF-8 as ``bytes``, byte-exact. ``filename``
        may also be ``@stdout`` or ``@stderr``: the run's full captured output.
        """
        if filename is not None:
            return await self._file_value(task_hash, filename)
        listing = await self.list_task_files(task_hash)
        return {entry["path"]: await self._file_value(task_hash, entry["path"]) for entry in listing["files"]}

    async def get_files_for_model(
        self,
        task_hash: str | None,
        filename: str | None = None,
        offset: int = 0,
        *,
        session_id: str | None = None,
    ) -> GetFilesResult:
        """What ec2_get_files returns: contents capped at ``max_output_chars`` in all, with paging hints."""
        owner = {"task_hash": task_hash, "session_id": session_id}
        budget = self.config.max_output_chars
        if filename is not None:
            page = await self.read_file(filename, **owner, offset=offset, max_bytes=budget)
            return GetFilesResult(task_hash=task_hash, session_id=session_id, files=[page])
        listing = await self.list_files(**owner)
        files: list[FileContent] = []
        not_shown: list[str] = []
        left = budget
        for index, entry in enumerate(listing["files"]):
            # One runner call per file: the first few always get a glimpse (256 bytes at least); once the
            # budget is spent, the rest are named instead of read.
            if left <= 0 and index >= FILES_ALWAYS_SHOWN:
                not_shown.append(entry["path"])
                continue
            page = await self.read_file(entry["path"], **owner, offset=0, max_bytes=max(256, left))
            files.append(page)
            left -= len(page.content)
        skipped = [SkippedFile(**s) for s in listing["skipped"]]
        return GetFilesResult(
            task_hash=task_hash, session_id=session_id, files=files, skipped=skipped, not_shown=not_shown
        )

    # ------------------------------------------------------------------ sessions
    def session(self, session_id: str) -> AsyncSession:
        """The session ``session_id``: opened on first use, reattached while it lives."""
        return AsyncSession(self, session_id)

    def python_runtime(self) -> str:
        """The allowed Python runtime a session's interpreter runs under."""
        for name in ("python3", "python"):
            if name in self.allowed_runtimes():
                return name
        raise InvalidInputError("this environment allows no Python runtime: sessions need python3")

    # ------------------------------------------------------------------ cleanup and status
    async def cleanup_tasks(self, hours: float | None = None) -> CleanupResult:
        """Remove what the environment's cleanup policy selects (by default: older than ``hours``)."""
        hours = self.config.cleanup_after_hours if hours is None else hours
        if not 0 <= hours <= 87600:
            raise InvalidInputError(f"hours: {hours!r} must be between 0 and 87600")
        policy = self.registry.cleanup_policies.get(self.config.cleanup_policy)
        if policy is None:
            known = ", ".join(sorted(self.registry.cleanup_policies))
            raise ConfigError(f"cleanup_policy {self.config.cleanup_policy!r} is unknown; known: {known}")
        inventory = Inventory.model_validate(
            await self._call("inventory", sizes=bool(getattr(policy, "needs_sizes", False)))
        )
        chosen = policy.select(inventory, hours, self.config)
        removed: list[RemovedEntry] = []
        skipped: list[SkippedEntry] = []
        if chosen:
            entries = [{"kind": e.kind, "id": e.id} for e in chosen]
            result = await self._call("remove", timeout=600, entries=entries)
            removed = [RemovedEntry(**e) for e in result["removed"]]
            skipped = [SkippedEntry(**e) for e in result.get("skipped", [])]
        log.debug(
            "cleanup (%s, %s h) removed %d, kept %d in use", policy.name, hours, len(removed), len(skipped)
        )
        unreached = [UnreachedTarget(target=t, error=e) for t, e in sorted(inventory.unreached.items())]
        return CleanupResult(
            policy=policy.name, hours=hours, removed=removed, skipped=skipped, unreached=unreached
        )

    async def instance_status(self) -> InstanceStatus:
        """Reachability and health of the target: each part checked and reported on its own."""
        transport = self.transport
        parts = list(await transport.status_parts())
        status = InstanceStatus(transport=transport.name, target=transport.target, healthy=False)
        runtimes = [self.registry.runtimes[n] for n in self.allowed_runtimes()]
        try:
            probe = await self._call(
                "probe",
                runtimes=[{"name": r.name, "version_argv": r.version_argv} for r in runtimes],
            )
        except TransportError as exc:
            parts.append(StatusPart(name="probe", ok=False, message=f"the probe could not run: {exc}"))
        else:
            status.runtimes = [RuntimeStatus(**r) for r in probe["runtimes"]]
            status.disk_free_mb = round(probe["disk_free_bytes"] / 2**20, 1)
            status.isolation = (
                "bwrap" if probe["bwrap_usable"] and self.config.isolation != "none" else "none"
            )
            status.cgroup_limits = probe["cgroup_controllers"] + (["kill"] if probe["cgroup_kill"] else [])
            status.interpreters = [LiveInterpreter(**i) for i in probe.get("interpreters") or []]
            missing = [r.name for r in status.runtimes if not r.available]
            parts.append(
                StatusPart(
                    name="probe",
                    ok=not missing,
                    message="all runtimes available"
                    if not missing
                    else f"runtimes not available on the target: {', '.join(missing)}",
                    details={k: v for k, v in probe.items() if k not in ("runtimes", "interpreters")},
                )
            )
            status.warnings += _isolation_warnings(self.config, probe, transport.name)
        status.parts = parts
        status.healthy = all(p.ok for p in parts)
        return status

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _isolation_warnings(config: SandboxConfig, probe: dict[str, Any], transport: str) -> list[str]:
    """What the target cannot enforce, in words: every layer that is missing and what that lets code do."""
    warnings = []
    bwrap = bool(probe["bwrap_usable"]) and config.isolation != "none"
    if config.isolation == "none":
        warnings.append("isolation is 'none': user code runs without namespaces (set isolation to 'auto')")
    elif not probe["bwrap_usable"]:
        warnings.append(
            "bubblewrap is not usable on the target: code runs without namespaces (install 'bubblewrap')"
        )
    if not bwrap and not config.network and not probe.get("netns_usable"):
        warnings.append(
            "network is off in the configuration, but without bubblewrap or a network namespace (root with "
            "CAP_SYS_ADMIN) nothing enforces it: code can reach the network"
        )
    if not probe["privileged"]:
        warnings.append("the runner is not root: code runs as the invoking user, not a per-session uid")
        if not bwrap and not probe.get("cgroup_kill"):
            warnings.append(
                "without bubblewrap, a cgroup or root, a program that calls setsid() can outlive its run"
            )
    if config.syscall_filter != "none" and probe.get("seccomp") is False:
        warnings.append(
            "the target cannot filter syscalls (a kernel without seccomp, or an architecture other than "
            "x86_64 and aarch64): code reaches the whole kernel interface (io_uring, keyctl, bpf, ...)"
        )
    elif config.syscall_filter == "none":
        warnings.append(
            "syscall_filter is 'none': code reaches the whole kernel interface (set it to 'default')"
        )
    missing = [c for c in ("memory", "pids") if c not in (probe.get("cgroup_controllers") or [])]
    if missing:
        warnings.append(
            f"no cgroup {' or '.join(missing)} controller on the target: memory and process limits are "
            "rlimits (per process, and per uid for processes), not totals per run"
        )
    if config.network and probe["imds_guard"] and not probe["privileged"]:
        warnings.append(
            "network is on and the metadata firewall covers only the sandbox uids, but the runner is not "
            "root: code runs as the login user, outside them (set ssh_sudo for ssh/eic)"
        )
    if (transport != "local" or probe.get("on_ec2")) and config.network and not probe["imds_guard"]:
        warnings.append(
            "network is on but no firewall keeps sandbox uids off the instance metadata service "
            "(169.254.169.254): code may obtain the instance role's credentials; run "
            "`ec2-sandbox prepare-instance` or the provisioning script"
        )
    return warnings


class _FileOwner(TypedDict, total=False):
    """The request fields naming whose file it is: exactly one of the two."""

    task_hash: str
    session_id: str


def _file_owner(task_hash: str | None, session_id: str | None) -> _FileOwner:
    """The request fields naming whose file it is: a task's or a session's, never both."""
    if task_hash is not None and session_id is None:
        _field_error("task_hash", check_task_hash, task_hash)
        return {"task_hash": task_hash}
    if session_id is not None and task_hash is None:
        _field_error("session_id", check_session_id, session_id)
        return {"session_id": session_id}
    raise InvalidInputError("give exactly one of task_hash (a task's files) and session_id (a session's)")


def _file_content(path: str, data: bytes, size: int, offset: int) -> FileContent:
    end = offset + len(data)
    encoding: Literal["utf-8", "base64"]
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = protocol.b64(data), "base64"
    return FileContent(
        path=path,
        size=size,
        offset=offset,
        encoding=encoding,
        content=text,
        truncated=end < size,
        next_offset=end if end < size else None,
        mime_type=mimetypes.guess_type(path)[0],
    )


class _LoopThread:
    """A private event loop on a daemon thread, so sync callers work even inside a running loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ec2-sandbox-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class Sandbox:
    """The synchronous API. Every method has an ``a``-prefixed coroutine twin; ``.aio`` is the async class."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        transport: Transport | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.aio = AsyncSandbox(config, transport=transport, registry=registry)
        self._loop: _LoopThread | None = None
        self._loop_lock = threading.Lock()

    @classmethod
    def from_config(cls, path: str | Path | None = None, environment: str = "default") -> Sandbox:
        """A sandbox for ``environment`` of the configuration file at ``path`` (or a preset)."""
        return cls(load_config(path, environment))

    @property
    def config(self) -> SandboxConfig:
        return self.aio.config

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._loop_lock:
            if self._loop is None:
                self._loop = _LoopThread()
        return self._loop.run(coro)

    run = _run  # public: adapters' synchronous paths run their coroutines here, on this sandbox's own loop

    # async twins
    def aexecute_code(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, ExecutionResult]:
        return self.aio.execute_code(*args, **kwargs)

    def aget_task_files(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self.aio.get_task_files(*args, **kwargs)

    def acleanup_tasks(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, CleanupResult]:
        return self.aio.cleanup_tasks(*args, **kwargs)

    def ainstance_status(self) -> Coroutine[Any, Any, InstanceStatus]:
        return self.aio.instance_status()

    # sync
    def execute_code(
        self,
        code: str,
        runtime: str | None = None,
        session_id: str | None = None,
        files: Mapping[str, FileData] | None = None,
        env_vars: Mapping[str, str] | None = None,
        create_filesystem: bool = True,
        timeout: float | None = None,
        *,
        stateful: bool = False,
        on_output: OutputCallback | None = None,
        on_start: Callable[[str], object] | None = None,
    ) -> ExecutionResult:
        return self._run(
            self.aio.execute_code(
                code,
                runtime,
                session_id,
                files,
                env_vars,
                create_filesystem,
                timeout,
                stateful=stateful,
                on_output=on_output,
                on_start=on_start,
            )
        )

    def get_task_files(self, task_hash: str, filename: str | None = None) -> dict[str, FileData] | FileData:
        return self._run(self.aio.get_task_files(task_hash, filename))

    def read_task_file(
        self, task_hash: str, filename: str, offset: int = 0, max_bytes: int | None = None
    ) -> FileContent:
        return self._run(self.aio.read_task_file(task_hash, filename, offset, max_bytes))

    def download_task_file(
        self, task_hash: str, filename: str, sink: Callable[[bytes], object]
    ) -> tuple[int, int]:
        return self._run(self.aio.download_task_file(task_hash, filename, sink))

    def cleanup_tasks(self, hours: float | None = None) -> CleanupResult:
        return self._run(self.aio.cleanup_tasks(hours))

    def session(self, session_id: str) -> Session:
        """The session ``session_id`` (see :class:`Session`)."""
        return Session(self, session_id)

    def instance_status(self) -> InstanceStatus:
        return self._run(self.aio.instance_status())

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run(self.aio.aclose())
            self._loop.stop()
            self._loop = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_request(**fields: Any) -> RunRequest:
    """A :class:`RunRequest` from a caller's arguments (any mappings for files and env vars), or
    :class:`InvalidInputError` naming each field that breaks a rule."""
    try:
        return RunRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInputError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """One line per problem: 'field: rule' (a rule over several fields names its field itself)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
