"""Sessions: a work dir, a /tmp and a persistent Python interpreter on the target, named by an id.

``sandbox.session("analysis")`` opens the session or reattaches to it: the state lives on the target, so
another process (or the same agent after a crash) that opens the same id reaches the same interpreter with
its variables. Cells run in order; files move in and out without running code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError, SandboxError
from .schema import ExecutionResult, FileContent, check_filename, check_session_id

if TYPE_CHECKING:
    from .sandbox import AsyncSandbox, FileData, OutputCallback, Sandbox


class AsyncSession:
    """One session of an :class:`AsyncSandbox`. Cheap to make: nothing happens on the target until used."""

    def __init__(self, sandbox: AsyncSandbox, session_id: str) -> None:
        try:
            check_session_id(session_id)
        except ValueError as exc:
            raise InvalidInputError(f"session_id: {exc}") from None
        if session_id is None:
            raise InvalidInputError("session_id: a session needs an id")
        self.sandbox = sandbox
        self.id = session_id

    async def run_code(
        self,
        code: str,
        language: str = "python",
        *,
        timeout: float | None = None,
        files: Mapping[str, FileData] | None = None,
        env_vars: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run a cell in the session's persistent interpreter: variables survive to the next cell.

        The result carries stdout/stderr, ``results`` (the final expression's value and displays, as MIME
        bundles), ``error`` (name, value, traceback), ``execution_count`` and ``state``. A cell past its
        timeout is interrupted (KeyboardInterrupt) and the state kept; ``state_lost`` says when and why
        earlier state is gone. ``env_vars`` apply when the interpreter starts (its first cell).
        """
        if language not in ("python", "python3"):
            raise InvalidInputError(
                f"language: the persistent interpreter runs Python; use run_command for {language!r}"
            )
        return await self.sandbox.execute_code(
            code,
            self.sandbox.python_runtime(),
            self.id,
            files,
            env_vars,
            True,
            timeout,
            stateful=True,
            on_output=on_output,
        )

    async def run_command(
        self, command: str, *, timeout: float | None = None, env_vars: Mapping[str, str] | None = None
    ) -> ExecutionResult:
        """Run a bash command line in the session's work dir (a fresh process; files and /tmp are shared)."""
        return await self.sandbox.execute_code(command, "bash", self.id, None, env_vars, True, timeout)

    async def write_files(self, files: Mapping[str, FileData]) -> list[dict[str, Any]]:
        """Write files (text or bytes, nested paths) into the session's work dir without running code."""
        entries = []
        for name, content in files.items():
            try:
                check_filename(name)
            except ValueError as exc:
                raise InvalidInputError(f"files[{name!r}]: {exc}") from None
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            entries.append({"path": name, "data": data})
        result = await self.sandbox._call("write", session_id=self.id, files=entries)
        return list(result["written"])

    async def write_file(self, path: str, content: FileData) -> None:
        await self.write_files({path: content})

    async def read_file(self, path: str, offset: int = 0, max_bytes: int | None = None) -> FileContent:
        """One file of the session's work dir, from ``offset``, at most ``max_bytes`` (any size, paged)."""
        return await self.sandbox.read_file(path, session_id=self.id, offset=offset, max_bytes=max_bytes)

    async def read_bytes(self, path: str) -> bytes:
        buffer = bytearray()
        await self.sandbox.download_file(path, buffer.extend, session_id=self.id)
        return bytes(buffer)

    async def list_files(self) -> list[dict[str, Any]]:
        """Every regular file of the session's work dir, with its size (``type`` says file)."""
        listing = await self.sandbox.list_files(session_id=self.id)
        return [dict(entry, type="file") for entry in listing["files"]]

    async def remove_files(self, *paths: str) -> list[str]:
        """Remove files or whole dirs from the session's work dir; returns what was removed."""
        for path in paths:
            try:
                check_filename(path)
            except ValueError as exc:
                raise InvalidInputError(f"paths[{path!r}]: {exc}") from None
        result = await self.sandbox._call("remove_files", session_id=self.id, paths=list(paths))
        return list(result["removed"])

    async def restart(self) -> None:
        """Drop the interpreter's state (its files stay); the next cell starts a fresh interpreter."""
        await self.sandbox._call("session", session_id=self.id, action="restart", timeout=120)

    async def close(self) -> None:
        """Stop the interpreter; the session's files stay until cleanup."""
        await self.sandbox._call("session", session_id=self.id, action="close", timeout=120)

    async def status(self) -> dict[str, Any]:
        """Whether the interpreter is up, and how many cells it ran."""
        return await self.sandbox._call("session", session_id=self.id, action="status")

    async def delete(self) -> bool:
        """Remove the session now: its interpreter, work dir and /tmp (what cleanup does once it is old).

        True if it was removed, False if there was nothing to remove. A session in use (a call in
        progress, a live process of its uid) is left alone and :class:`SandboxError` says why.
        """
        result = await self.sandbox._call("remove", timeout=600, entries=[{"kind": "session", "id": self.id}])
        for skipped in result["skipped"]:
            raise SandboxError(f"session {self.id!r} was not removed: {skipped['reason']}")
        return bool(result["removed"])

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class Session:
    """The synchronous twin of :class:`AsyncSession` (from :meth:`Sandbox.session`)."""

    def __init__(self, sandbox: Sandbox, session_id: str) -> None:
        self._sync = sandbox
        self.aio = AsyncSession(sandbox.aio, session_id)
        self.id = session_id

    def run_code(self, code: str, language: str = "python", **kwargs: Any) -> ExecutionResult:
        return self._sync._run(self.aio.run_code(code, language, **kwargs))

    def run_command(self, command: str, **kwargs: Any) -> ExecutionResult:
        return self._sync._run(self.aio.run_command(command, **kwargs))

    def write_files(self, files: Mapping[str, FileData]) -> list[dict[str, Any]]:
        return self._sync._run(self.aio.write_files(files))

    def write_file(self, path: str, content: FileData) -> None:
        self._sync._run(self.aio.write_file(path, content))

    def read_file(self, path: str, offset: int = 0, max_bytes: int | None = None) -> FileContent:
        return self._sync._run(self.aio.read_file(path, offset, max_bytes))

    def read_bytes(self, path: str) -> bytes:
        return self._sync._run(self.aio.read_bytes(path))

    def list_files(self) -> list[dict[str, Any]]:
        return self._sync._run(self.aio.list_files())

    def remove_files(self, *paths: str) -> list[str]:
        return self._sync._run(self.aio.remove_files(*paths))

    def restart(self) -> None:
        self._sync._run(self.aio.restart())

    def close(self) -> None:
        self._sync._run(self.aio.close())

    def status(self) -> dict[str, Any]:
        return self._sync._run(self.aio.status())

    def delete(self) -> bool:
        return self._sync._run(self.aio.delete())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
