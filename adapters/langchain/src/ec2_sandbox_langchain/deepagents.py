"""A Deep Agents sandbox backend on an ec2-sandbox session.

>>> from deepagents import create_deep_agent
>>> from ec2_sandbox_langchain import EC2SandboxBackend
>>> backend = EC2SandboxBackend("production", session_id="report")
>>> agent = create_deep_agent(model, backend=backend)

Deep Agents' ``BaseSandbox`` builds ls, read, write, edit, grep and glob on three primitives; this module
gives them on one session of the target (local, SSH, EIC or SSM):

- ``execute`` runs the command line with bash in the session's work dir, stderr merged into stdout in the
  order it was written (``exec 2>&1``), within the environment's limits (see :data:`PREAMBLE`);
- ``upload_files`` and ``download_files`` move bytes without passing them through a shell command line:
  they travel as the runner's input files and as paged reads of the session's work dir, and a short Python
  program *inside the sandbox* puts them in place or picks them up. Paths are therefore the sandbox's own
  view (its work dir, its /tmp, a read-only root), and every refusal (permissions, a directory in the way,
  a file that is not regular) is the sandbox's own, returned as Deep Agents' error code.

Nothing here raises into the agent's run: an unreachable target or a refused request becomes an
``ExecuteResponse`` with the error as output, or a per-file error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar

try:
    from deepagents.backends.protocol import (
        INVALID_PATH,
        ExecuteResponse,
        FileDownloadResponse,
        FileUploadResponse,
    )
    from deepagents.backends.sandbox import BaseSandbox
except ImportError as exc:  # pragma: no cover - exercised by installing without the extra
    raise ImportError(
        "EC2SandboxBackend needs Deep Agents: pip install 'ec2-sandbox-langchain[deepagents]'"
    ) from exc

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.errors import SandboxError
from ec2_sandbox.schema import ExecutionResult
from ec2_sandbox.session import AsyncSession

__all__ = ["EC2SandboxBackend"]

T = TypeVar("T")

#: The prefix of the work-dir folder where files wait between the runner and the program that moves them:
#: one folder per transfer (its name ends in a random token), removed when the transfer is done, so that
#: concurrent transfers never share one. Hidden, so that ls and glob of the work dir rarely meet it.
TRANSFER_DIR = ".ec2-sandbox-transfer-"

#: What runs before every command, on one line (the command's own lines keep their numbers but one):
#: stderr joins stdout, in the order written, as Deep Agents' one ``output`` asks; and ``python`` means
#: python3 where the target has no ``python`` (Amazon Linux and Debian ship only python3, models write
#: ``python`` all the time). The function is exported, so bash scripts the command starts see it too.
PREAMBLE = (
    'exec 2>&1; command -v python >/dev/null 2>&1 || { python() { python3 "$@"; }; export -f python; }\n'
)

#: Most bytes of a command's output ``execute`` returns; the rest is cut and the response says so.
DEFAULT_MAX_OUTPUT_BYTES = 4 << 20

# The programs below run inside the sandbox, as the session's user, with the run's limits: a path is
# resolved exactly as a command of the agent would resolve it. They read the paths from a manifest file
# (never from their own source text) and print one JSON object: {index: error code} for the files that
# failed. TOKEN is filled in with a random hex name of this module's own making.
_ERRNO_CODES = """\
import errno, json, os, shutil, stat

STAGE = %(transfer_dir)r + %(token)r


def code_of(exc):
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file_not_found"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission_denied"
    if exc.errno == errno.EISDIR:
        return "is_directory"
    if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST):
        return "invalid_path"
    return "%%s: %%s" %% (type(exc).__name__, exc.strerror or exc)


with open(os.path.join(STAGE, "manifest.json"), encoding="utf-8") as fh:
    manifest = json.load(fh)
errors = {}
"""

_UPLOAD_PROGRAM = (
    _ERRNO_CODES
    + """\
try:
    for index, dest in enumerate(manifest):
        staged = os.path.join(STAGE, str(index))
        try:
            if os.path.isdir(dest):
                errors[index] = "is_directory"
                continue
            parent = os.path.dirname(dest)
            try:
                os.makedirs(parent, exist_ok=True)
            except FileExistsError:
                # A file where a parent dir should be: the path cannot name a file.
                errors[index] = "invalid_path"
                continue
            try:
                os.replace(staged, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Another mount (the session's /tmp is one): copy beside the destination, then rename, so
                # that a reader never sees half a file and a symlink at the destination is replaced, not
                # written through.
                temp = os.path.join(parent, ".%%s.%%s" %% (os.path.basename(dest)[:100], %(token)r))
                try:
                    shutil.copyfile(staged, temp)
                    os.replace(temp, dest)
                except BaseException:
                    try:
                        os.unlink(temp)
                    except OSError:
                        pass
                    raise
        except OSError as exc:
            errors[index] = code_of(exc)
finally:
    shutil.rmtree(STAGE, ignore_errors=True)
print(json.dumps(errors))
"""
)

_DOWNLOAD_PROGRAM = (
    _ERRNO_CODES
    + """\
for index, src in enumerate(manifest):
    try:
        # O_NONBLOCK: a FIFO must not hang the open; it is refused below as not a regular file.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        errors[index] = code_of(exc)
        continue
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            errors[index] = "is_directory"
            continue
        if not stat.S_ISREG(mode):
            # A device or a FIFO: /dev/zero would copy until the disk limit.
            errors[index] = "invalid_path"
            continue
        os.set_blocking(fd, True)
        # Copied from the fd checked above: what is picked up is what was checked.
        with os.fdopen(fd, "rb", closefd=False) as source:
            with open(os.path.join(STAGE, str(index)), "xb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    except OSError as exc:
        errors[index] = code_of(exc)
    finally:
        os.close(fd)
print(json.dumps(errors))
"""
)


class EC2SandboxBackend(BaseSandbox):
    """Deep Agents' sandbox backend on one ec2-sandbox session: commands and files on the target.

    ``config`` names the sandbox as the tools take it: a :class:`SandboxConfig`, an environment name of the
    configuration file, a ``Sandbox``/``AsyncSandbox`` (shared, with its transport), or None (local).
    ``session_id`` names the session (a new random one by default): a backend made later with the same id
    reattaches to its files, its /tmp and its interpreter. Isolation and limits are the environment's; a
    command's ``timeout`` is at most its ``max_execution_time`` (longer ones, and 0, get that much).
    """

    def __init__(
        self,
        config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
        *,
        session_id: str | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        from . import _sync_facade

        if max_output_bytes < 1:
            raise ValueError("max_output_bytes must be positive")
        self._owns_sandbox = not isinstance(config, Sandbox | AsyncSandbox)
        self._sync = _sync_facade(config)
        self._session = AsyncSession(self._sync.aio, session_id or f"deepagents-{secrets.token_hex(6)}")
        self.max_output_bytes = max_output_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workdir: str | None = None

    # ------------------------------------------------------------------ identity and the session
    @property
    def id(self) -> str:
        """The session's id: a backend made with ``session_id=`` this id reattaches to the same session."""
        return self._session.id

    @property
    def session(self) -> AsyncSession:
        """The ec2-sandbox session under the backend, for what Deep Agents has no tool for: ``run_code`` in
        its persistent interpreter, ``list_files``, ``restart``, ``status`` (awaitable)."""
        return self._session

    @property
    def working_directory(self) -> str:
        """The session's work dir, as the sandbox sees it: where commands start, and (with /tmp) where the
        agent can write. Worth a line in the agent's system prompt: the rest of the root is read-only."""
        if self._workdir is None:
            listing = self._run(self._sync.aio.list_files(session_id=self._session.id))
            self._workdir = str(listing["working_directory"])
        return self._workdir

    @property
    def sandbox(self) -> Sandbox:
        """The synchronous sandbox whose event loop serves the backend's sync calls."""
        return self._sync

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        # The facade's loop lives on its own thread: sync calls work inside a running loop too (LangGraph's
        # sync tools run in worker threads), and a transport's connection outlives the call.
        return self._sync.run(coro)

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the facade's loop. Async calls share the sync calls' loop, hence one
        connection per backend (SSH, EIC) whichever loops its callers run on: a connection opened on a
        caller's loop would stay open, unused, once that loop ends."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = self._run(_running_loop())
        if loop is asyncio.get_running_loop():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def aclose(self) -> None:
        """Stop the session's interpreter (its files stay until cleanup) and, if the backend made its own
        sandbox, close its transport."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """The synchronous :meth:`aclose`."""
        try:
            self._run(self._session.close())
        finally:
            if self._owns_sandbox:
                self._sync.close()

    # ------------------------------------------------------------------ execute
    def _timeout(self, timeout: int | None) -> float:
        limit = self._sync.aio.config.max_execution_time
        if timeout is None or timeout <= 0 or timeout > limit:
            return limit
        return max(1, timeout)

    async def aexecute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        """Run ``command`` with bash in the session's work dir; output is stdout and stderr as written."""
        return await self._on_loop(self._execute(command, timeout))

    async def _execute(self, command: str, timeout: int | None) -> ExecuteResponse:
        try:
            result = await self._session.run_command(PREAMBLE + command, timeout=self._timeout(timeout))
            return await self._response(result)
        except SandboxError as exc:
            return ExecuteResponse(
                output=f"Error: the sandbox could not run the command: {exc}", exit_code=None
            )

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        return self._run(self._execute(command, timeout))

    async def _response(self, result: ExecutionResult) -> ExecuteResponse:
        output, cut = await self._full_stdout(result)
        if result.stderr:  # the runner's own words, or what the command wrote after closing stdout
            output += result.stderr
        exit_code = result.return_code
        if result.termination_reason != "exited":
            # Killed by a limit (or never started): the output so far, then why, as a shell would say it.
            reason = result.error_message or result.termination_reason
            output += f"{'' if not output or output.endswith(chr(10)) else chr(10)}[ec2-sandbox: {reason}]\n"
            if result.termination_reason == "timeout":
                exit_code = 124  # what coreutils' timeout(1) exits with
            elif result.termination_reason == "not_started":
                exit_code = None
            elif exit_code is not None and exit_code < 0:
                exit_code = 128 - exit_code  # killed by signal N: 128 + N, as bash reports it
        return ExecuteResponse(output=output, exit_code=exit_code, truncated=cut)

    async def _full_stdout(self, result: ExecutionResult) -> tuple[str, bool]:
        """The run's stdout up to ``max_output_bytes``: the inline text when it is whole, else read back
        from the run's record (``@stdout``) page by page; and whether bytes were left out."""
        if not result.stdout_truncated:
            return result.stdout, False
        assert result.task_hash is not None  # AsyncSandbox.execute names every run
        buffer = bytearray()
        await self._sync.aio.download_task_file(
            result.task_hash, "@stdout", buffer.extend, max_bytes=self.max_output_bytes
        )
        text = buffer.decode("utf-8", "replace")
        if result.stdout_bytes <= len(buffer):
            return text, False
        note = (
            f"\n[... output cut at {len(buffer)} of {result.stdout_bytes} bytes; write it to a file and "
            "read that in pages ...]\n"
        )
        return text + note, True

    # ------------------------------------------------------------------ files
    async def aupload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Write each file at its absolute path in the sandbox (parents made; an existing file replaced)."""
        return await self._on_loop(self._upload(files))

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        return self._run(self._upload(files))

    async def _upload(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        errors: dict[int, str] = {}
        wanted: list[tuple[int, str, bytes]] = []
        # Input files reach the work dir without the run's file-size limit; a file the agent's own commands
        # could not write is not uploaded either.
        most = self._sync.aio.config.max_file_size_mb << 20
        for index, (path, content) in enumerate(files):
            problem = _path_problem(path)
            if problem is not None:
                errors[index] = problem
            elif len(content) > most:
                errors[index] = (
                    f"file_too_large: {len(content)} bytes is over this environment's file-size limit "
                    f"(max_file_size_mb = {most >> 20})"
                )
            else:
                wanted.append((index, path, content))
        if wanted:
            token = secrets.token_hex(8)
            stage = f"{TRANSFER_DIR}{token}"
            inputs: dict[str, bytes] = {
                f"{stage}/manifest.json": json.dumps([path for _, path, _ in wanted]).encode("utf-8")
            }
            for position, (_, _, content) in enumerate(wanted):
                inputs[f"{stage}/{position}"] = bytes(content)
            failed = await self._transfer(_UPLOAD_PROGRAM, token, inputs, len(wanted))
            for position, (index, _, _) in enumerate(wanted):
                if position in failed:
                    errors[index] = failed[position]
        return [
            FileUploadResponse(path=path, error=errors.get(index)) for index, (path, _) in enumerate(files)
        ]

    async def adownload_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """Read each file at its absolute path in the sandbox, byte for byte."""
        return await self._on_loop(self._download(paths))

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        return self._run(self._download(paths))

    async def _download(self, paths: list[str]) -> list[FileDownloadResponse]:
        errors: dict[int, str] = {}
        contents: dict[int, bytes] = {}
        wanted: list[tuple[int, str]] = []
        for index, path in enumerate(paths):
            problem = _path_problem(path)
            if problem is not None:
                errors[index] = problem
            else:
                wanted.append((index, path))
        if wanted:
            token = secrets.token_hex(8)
            stage = f"{TRANSFER_DIR}{token}"
            manifest = json.dumps([path for _, path in wanted]).encode("utf-8")
            try:
                failed = await self._transfer(
                    _DOWNLOAD_PROGRAM, token, {f"{stage}/manifest.json": manifest}, len(wanted)
                )
                for position, (index, _) in enumerate(wanted):
                    if position in failed:
                        errors[index] = failed[position]
                        continue
                    try:
                        contents[index] = await self._session.read_bytes(f"{stage}/{position}")
                    except SandboxError as exc:
                        errors[index] = f"error: {exc}"
            finally:
                await self._discard(stage)
        return [
            FileDownloadResponse(path=path, content=contents.get(index), error=errors.get(index))
            for index, path in enumerate(paths)
        ]

    async def _transfer(
        self, program: str, token: str, inputs: dict[str, bytes], count: int
    ) -> dict[int, str]:
        """Run a transfer program in the session with ``inputs`` as its input files; the per-file errors it
        reports ({position: code}), or the same error for all ``count`` files when it could not say."""
        source = program % {"transfer_dir": TRANSFER_DIR, "token": token}
        try:
            result = await self._sync.aio.execute_code(
                source, self._sync.aio.python_runtime(), self._session.id, inputs, None, True
            )
        except SandboxError as exc:
            await self._discard(f"{TRANSFER_DIR}{token}")
            return dict.fromkeys(range(count), f"error: {exc}")
        output, _ = await self._full_stdout(result)
        try:
            reported = json.loads(output.strip().splitlines()[-1]) if result.success else None
        except (ValueError, IndexError):
            reported = None
        if not isinstance(reported, dict):
            # Killed by a limit (disk, file size, time) or refused before it started: say so for every file.
            await self._discard(f"{TRANSFER_DIR}{token}")
            reason = result.error_message or output.strip()[-500:] or result.termination_reason
            return dict.fromkeys(range(count), f"error: {reason}")
        return {int(position): str(code) for position, code in reported.items()}

    async def _discard(self, stage: str) -> None:
        # Nothing to remove, or the target is gone: cleanup removes the session's files in time.
        with contextlib.suppress(SandboxError):
            await self._session.remove_files(stage)


def _path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file for a transfer, as Deep Agents' error code; None when it can.

    Paths are the sandbox's absolute paths. A relative one has no meaning to Deep Agents, and '..' is
    refused rather than resolved, so that a path a model made up means what it says.
    """
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        return INVALID_PATH
    parts = [part for part in path.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts) or path.endswith("/"):
        return INVALID_PATH
    if posixpath.normpath(path) != "/" + "/".join(parts):
        return INVALID_PATH
    return None


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
