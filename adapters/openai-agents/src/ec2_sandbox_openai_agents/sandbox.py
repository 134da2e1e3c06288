"""An ec2-sandbox session as a sandbox of the OpenAI Agents SDK (``agents.sandbox``), for ``SandboxAgent``.

>>> from agents.run import RunConfig
>>> from agents.sandbox import SandboxRunConfig
>>> from ec2_sandbox_openai_agents import EC2SandboxClient
>>> run_config = RunConfig(sandbox=SandboxRunConfig(client=EC2SandboxClient("default")))

One SDK session is one ec2-sandbox session (``AsyncSandbox.session(id)``): its work dir is the SDK's workspace
root, so the paths the model sees are the paths its commands see; its /tmp persists with it. Commands run
as the session's commands do (bash in the work dir, the session's uid, its bubblewrap namespaces, the
environment's limits and network); files move through the session's file API, with the runner's
symlink-proof rules, and never through the model. Which target, isolation and limits apply is the
client's configuration, never the serialized state's: a state names only its session.
"""

from __future__ import annotations

import io
import logging
import shlex
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NoReturn

from agents.sandbox.errors import (
    ConfigurationError,
    ErrorCode,
    ExecTimeoutError,
    ExecTransportError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceStartError,
    WorkspaceWriteTypeError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.session.sandbox_session import SandboxSession
from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, User
from agents.sandbox.util.tar_utils import UnsafeTarMemberError, validate_tar_bytes
from pydantic import field_validator

from ec2_sandbox import AsyncSandbox, Sandbox, SandboxConfig
from ec2_sandbox.errors import InvalidInputError, TaskNotFoundError
from ec2_sandbox.errors import SandboxError as EC2Error
from ec2_sandbox.presentation import sandbox_for
from ec2_sandbox.schema import ExecutionResult, check_session_id
from ec2_sandbox.session import AsyncSession

__all__ = [
    "BACKEND_ID",
    "EC2SandboxClient",
    "EC2SandboxClientOptions",
    "EC2SandboxSession",
    "EC2SandboxSessionState",
]

log = logging.getLogger(__name__)

BACKEND_ID = "ec2_sandbox"
#: The SDK's default workspace root: a manifest that keeps it gets the session's work dir instead.
DEFAULT_MANIFEST_ROOT = Manifest.model_fields["root"].default
#: Prefix of the archives persist/hydrate stage in the work dir (a random suffix each time); tar leaves
#: them out of the archives it makes.
STAGING_PREFIX = ".openai-agents-workspace-"


def _check_session_id(value: str) -> str:
    try:
        check_session_id(value)
    except ValueError as exc:
        raise ValueError(f"ec2-sandbox session id {value!r}: {exc}") from None
    return value


class EC2SandboxClientOptions(BaseSandboxClientOptions):
    """Options for :meth:`EC2SandboxClient.create`.

    ``session_id``: the ec2-sandbox session to open, or to reattach to while it lives (its files and
    interpreter are shared with every other user of that id, ``ec2_code_execution`` included). None, the
    default, makes a fresh one named ``oai-<32 hex digits>``.
    """

    type: Literal["ec2_sandbox"] = "ec2_sandbox"
    session_id: str | None = None

    @field_validator("session_id")
    @classmethod
    def _valid_session_id(cls, value: str | None) -> str | None:
        return None if value is None else _check_session_id(value)


class EC2SandboxSessionState(SandboxSessionState):
    """What resuming needs: the ec2-sandbox session's id (the manifest's root is its work dir)."""

    type: Literal["ec2_sandbox"] = "ec2_sandbox"
    ec2_session_id: str

    @field_validator("ec2_session_id")
    @classmethod
    def _valid_session_id(cls, value: str) -> str:
        return _check_session_id(value)


def _unsupported_manifest(manifest: Manifest) -> None:
    """Refuse what an ec2-sandbox session cannot give, before anything runs.

    The session runs everything as its own uid, so there are no accounts to provision; it sees its work dir
    and /tmp only, so there are no host paths to grant; its work dir is fixed by the target's base dir.
    """
    if manifest.users or manifest.groups:
        raise ValueError(
            "an ec2-sandbox session runs everything as its own unprivileged uid: manifest users and groups "
            "cannot be provisioned; leave them out"
        )
    if manifest.extra_path_grants:
        raise ValueError(
            "an ec2-sandbox session sees its work dir and its /tmp only: extra_path_grants are not supported"
        )


def _file_error(
    kind: type[WorkspaceArchiveReadError | WorkspaceArchiveWriteError], path: Path | str, exc: EC2Error
) -> WorkspaceArchiveReadError | WorkspaceArchiveWriteError:
    """The SDK's error for a file the session's file API refused (a link, a dir, a bad name: retrying
    cannot help) or could not reach (the transport: it may)."""
    retryable = False if isinstance(exc, InvalidInputError) else None
    return kind(path=Path(str(path)), context={"reason": str(exc)}, cause=exc, retryable=retryable)


class EC2SandboxSession(BaseSandboxSession):
    """One ec2-sandbox session as an ``agents.sandbox`` session (made by :class:`EC2SandboxClient`)."""

    state: EC2SandboxSessionState

    def __init__(self, *, state: EC2SandboxSessionState, sandbox: AsyncSandbox) -> None:
        self.state = state
        self.sandbox = sandbox
        self.session: AsyncSession = sandbox.session(state.ec2_session_id)
        self._shut_down = False

    # ------------------------------------------------------------------ lifecycle
    async def _apply_manifest(self, *, only_ephemeral: bool = False, provision_accounts: bool = True) -> Any:
        _unsupported_manifest(self.state.manifest)
        return await super()._apply_manifest(
            only_ephemeral=only_ephemeral, provision_accounts=provision_accounts
        )

    async def provision_manifest_accounts(self) -> None:
        _unsupported_manifest(self.state.manifest)

    async def _after_start(self) -> None:
        self._shut_down = False

    async def _shutdown_backend(self) -> None:
        # Nothing of the session is torn down here: its files, /tmp and any interpreter (which
        # ec2_code_execution may share under the same id) stay for a resume from another process, and
        # the interpreter idles out by itself. EC2SandboxClient.delete removes the session.
        self._shut_down = True

    async def running(self) -> bool:
        """Whether the target answers and the session's work dir is there."""
        if self._shut_down:
            return False
        try:
            listing = await self.sandbox.list_files(session_id=self.state.ec2_session_id)
        except EC2Error:
            return False
        return bool(listing["exists"])

    # ------------------------------------------------------------------ commands
    def _prepare_exec_command(
        self, *command: str | Path, shell: bool | list[str], user: str | User | None
    ) -> list[str]:
        if user is not None:
            self._refuse_user(user, "exec")
        return super()._prepare_exec_command(*command, shell=shell, user=None)

    def _refuse_user(self, user: str | User, op: Literal["exec", "read", "write"]) -> NoReturn:
        # Running as another account would need sudo inside the sandbox, which the session never has.
        name = user.name if isinstance(user, User) else user
        raise ConfigurationError(
            message=(
                f"cannot act as user {name!r}: an ec2-sandbox session runs everything as its own uid "
                "(leave SandboxAgent.run_as unset)"
            ),
            error_code=ErrorCode.SANDBOX_CONFIG_INVALID,
            op=op,
            context={"backend": BACKEND_ID, "user": name},
        )

    def _run_timeout(self, timeout: float | None) -> float:
        """The SDK's timeout within the environment's bounds (1 s to max_execution_time)."""
        limit = float(self.sandbox.config.max_execution_time)
        if timeout is None:
            return limit
        return min(max(float(timeout), 1.0), limit)

    async def _exec_internal(self, *command: str | Path, timeout: float | None = None) -> ExecResult:
        argv = [str(part) for part in command]
        if any("\x00" in part for part in argv):
            # No process can take a NUL in its arguments; the model learns it from the result.
            return ExecResult(stdout=b"", stderr=b"the command contains a NUL character\n", exit_code=2)
        env = await self.state.manifest.environment.resolve()
        run_timeout = self._run_timeout(timeout)
        try:
            result = await self.session.run_command(
                shlex.join(argv), timeout=run_timeout, env_vars=env or None
            )
        except InvalidInputError as exc:
            raise ExecTransportError(command=argv, message=str(exc), retryable=False, cause=exc) from exc
        except EC2Error as exc:
            raise ExecTransportError(
                command=argv, message=f"the target did not run the command: {exc}", cause=exc
            ) from exc
        if result.termination_reason == "not_started":
            # The target answered and refused to start it (its disk below the reserve, for example): a
            # result the model can act on, with a shell's "cannot execute" status.
            message = f"ec2-sandbox did not start the command: {result.error_message}\n"
            return ExecResult(stdout=b"", stderr=message.encode(), exit_code=126)
        if result.termination_reason == "timeout":
            raise ExecTimeoutError(
                command=argv,
                timeout_s=timeout,
                context={"backend": BACKEND_ID, "killed_after_s": run_timeout, "task_hash": result.task_hash},
            )
        stdout = await self._stream(result, "stdout")
        stderr = await self._stream(result, "stderr")
        exit_code = result.return_code
        if result.termination_reason != "exited":
            # A limit of the environment ended it: say which, as a shell would say "Killed".
            why = result.error_message or result.termination_reason
            stderr += f"\n[ec2-sandbox: the command was stopped: {why}]\n".encode()
        if exit_code is None or exit_code < 0 or (exit_code == 0 and result.termination_reason != "exited"):
            # A shell's status for a killed process; a run a limit stopped never reads as a success.
            exit_code = 128 + (result.signal or 9)
        return ExecResult(stdout=stdout, stderr=stderr, exit_code=exit_code)

    async def _stream(self, result: ExecutionResult, name: Literal["stdout", "stderr"]) -> bytes:
        """A command's whole stdout or stderr: the inline text, or the target's copy when it was cut."""
        if not getattr(result, f"{name}_truncated"):
            return str(getattr(result, name)).encode("utf-8")
        assert result.task_hash is not None  # AsyncSandbox.execute names every run
        buffer = bytearray()
        try:
            await self.sandbox.download_task_file(result.task_hash, f"@{name}", buffer.extend)
        except EC2Error as exc:
            raise ExecTransportError(
                command=("read", f"@{name}"), message=f"reading the command's {name}: {exc}", cause=exc
            ) from exc
        return bytes(buffer)

    # ------------------------------------------------------------------ files
    def _work_path(self, path: Path | str, *, for_write: bool = False) -> str:
        """``path`` (relative to the root, or absolute under it) as a path relative to the work dir.

        The SDK's policy refuses paths outside the workspace (InvalidManifestPathError); the runner refuses
        '..', symlinks and special files on the target.
        """
        absolute = PurePosixPath(self.normalize_path(path, for_write=for_write).as_posix())
        relative = absolute.relative_to(PurePosixPath(self.state.manifest.root)).as_posix()
        if relative in ("", "."):
            raise (WorkspaceArchiveWriteError if for_write else WorkspaceArchiveReadError)(
                path=Path(str(path)), context={"reason": "is the workspace root, a directory"}
            )
        return relative

    async def read(self, path: Path | str, *, user: str | User | None = None) -> io.IOBase:
        return io.BytesIO(await self._read(path, user=user))

    async def _read_bounded(self, path: Path, *, max_bytes: int) -> bytes:
        return await self._read(path, max_bytes=max_bytes)

    async def _read(
        self, path: Path | str, *, user: str | User | None = None, max_bytes: int | None = None
    ) -> bytes:
        if user is not None:
            self._refuse_user(user, "read")
        name = self._work_path(path)
        buffer = bytearray()
        try:
            await self.sandbox.download_file(
                # "./" keeps a file named like a stream ("@stdout") a file of the work dir.
                "./" + name,
                buffer.extend,
                session_id=self.state.ec2_session_id,
                max_bytes=max_bytes,
            )
        except TaskNotFoundError as exc:
            raise WorkspaceReadNotFoundError(path=Path(str(path)), cause=exc) from exc
        except EC2Error as exc:
            raise _file_error(WorkspaceArchiveReadError, path, exc) from exc
        return bytes(buffer)

    async def write(self, path: Path | str, data: io.IOBase, *, user: str | User | None = None) -> None:
        if user is not None:
            self._refuse_user(user, "write")
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=Path(str(path)), actual_type=type(payload).__name__)
        name = self._work_path(path, for_write=True)
        try:
            await self.session.write_files({name: bytes(payload)})
        except EC2Error as exc:
            raise _file_error(WorkspaceArchiveWriteError, path, exc) from exc

    # ------------------------------------------------------------------ workspace archives
    async def _checked(
        self, argv: list[str], error: type[WorkspaceArchiveReadError | WorkspaceArchiveWriteError]
    ) -> None:
        result = await self.exec(*argv, shell=False)
        if not result.ok():
            raise error(
                path=self._workspace_root_path(),
                context={
                    "reason": f"{argv[0]} exited {result.exit_code}",
                    "stderr": result.stderr.decode("utf-8", errors="replace")[-4000:],
                },
            )

    async def persist_workspace(self) -> io.IOBase:
        """A tar of the work dir (members relative to it), made on the target and read back as a file."""
        staged = f"{STAGING_PREFIX}{uuid.uuid4().hex}.tar"
        excludes = [f"--exclude=./{staged}", f"--exclude=./{STAGING_PREFIX}*"]
        excludes += [
            f"--exclude=./{rel.as_posix().lstrip('/')}"
            for rel in sorted(self._persist_workspace_skip_relpaths(), key=lambda p: p.as_posix())
            if rel.as_posix().lstrip("/") not in ("", ".")
        ]
        try:
            await self._checked(["tar", *excludes, "-cf", staged, "."], WorkspaceArchiveReadError)
            try:
                raw = await self.session.read_bytes(staged)
            except EC2Error as exc:
                raise WorkspaceArchiveReadError(path=self._workspace_root_path(), cause=exc) from exc
        finally:
            await self._remove_staged(staged)
        return io.BytesIO(raw)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        """Unpack a tar (as ``persist_workspace`` makes) into the work dir, on the target."""
        root = self._workspace_root_path()
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=root, actual_type=type(payload).__name__)
        try:
            # The SDK's own rules (no absolute or '..' members, no links out of the root, no devices),
            # before anything reaches the target; tar then runs inside the session's sandbox anyway.
            validate_tar_bytes(bytes(payload), allow_external_symlink_targets=False)
        except UnsafeTarMemberError as exc:
            raise WorkspaceArchiveWriteError(
                path=root, context={"reason": exc.reason, "member": exc.member}, cause=exc
            ) from exc
        staged = f"{STAGING_PREFIX}{uuid.uuid4().hex}.tar"
        try:
            try:
                await self.session.write_files({staged: bytes(payload)})
            except EC2Error as exc:
                raise WorkspaceArchiveWriteError(path=root, context={"reason": str(exc)}, cause=exc) from exc
            await self._checked(
                ["tar", "--no-same-owner", "--exclude", f"./{STAGING_PREFIX}*", "-xf", staged],
                WorkspaceArchiveWriteError,
            )
        finally:
            await self._remove_staged(staged)

    async def _remove_staged(self, staged: str) -> None:
        try:
            await self.session.remove_files(staged)
        except EC2Error as exc:
            log.warning("could not remove %s from session %s: %s", staged, self.state.ec2_session_id, exc)


class EC2SandboxClient(BaseSandboxClient[EC2SandboxClientOptions | None]):
    """Sandbox sessions for ``SandboxAgent`` on the target of an ec2-sandbox environment.

    ``config``: a :class:`SandboxConfig`, an environment name, an ``AsyncSandbox``/``Sandbox`` (shared as is)
    or None (the local transport). Isolation, limits, network and target are that environment's.
    """

    backend_id = BACKEND_ID
    supports_default_options = True

    def __init__(
        self,
        config: SandboxConfig | AsyncSandbox | Sandbox | str | None = None,
        *,
        instrumentation: Instrumentation | None = None,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.sandbox = sandbox_for(config)
        self._instrumentation = instrumentation if instrumentation is not None else Instrumentation()
        self._dependencies = dependencies

    async def _work_dir(self, session_id: str) -> tuple[str, bool]:
        """The session's work dir as its commands see it, and whether it exists already."""
        try:
            listing = await self.sandbox.list_files(session_id=session_id)
        except EC2Error as exc:
            raise WorkspaceStartError(
                path=Path(session_id),
                context={"backend": BACKEND_ID, "reason": str(exc)},
                cause=exc,
                message=f"failed to reach ec2-sandbox session {session_id!r}: {exc}",
            ) from exc
        return str(listing["working_directory"]), bool(listing["exists"])

    async def create(
        self,
        *,
        snapshot: SnapshotSpec | SnapshotBase | None = None,
        manifest: Manifest | None = None,
        options: EC2SandboxClientOptions | None = None,
    ) -> SandboxSession:
        options = options if options is not None else EC2SandboxClientOptions()
        manifest = manifest if manifest is not None else Manifest()
        _unsupported_manifest(manifest)
        self._validate_manifest_for_create(manifest)
        if "bash" not in self.sandbox.allowed_runtimes():
            raise ValueError(
                "this environment does not allow the bash runtime, which the sandbox's commands run under"
            )
        ec2_session_id = options.session_id or f"oai-{uuid.uuid4().hex}"
        work_dir, _ = await self._work_dir(ec2_session_id)
        if manifest.root != DEFAULT_MANIFEST_ROOT and manifest.root != work_dir:
            raise ValueError(
                f"the workspace root of an ec2-sandbox session is its work dir ({work_dir}); "
                f"leave Manifest.root at its default instead of {manifest.root!r}"
            )
        manifest = manifest.model_copy(update={"root": work_dir}, deep=True)
        session_id = uuid.uuid4()
        state = EC2SandboxSessionState(
            session_id=session_id,
            manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            ec2_session_id=ec2_session_id,
        )
        # A named session that lives already keeps its files: start() applies the manifest over them.
        inner = EC2SandboxSession(state=state, sandbox=self.sandbox)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Stop the session's interpreter and remove its work dir and /tmp from the target."""
        inner = session._inner
        if not isinstance(inner, EC2SandboxSession):
            raise TypeError("EC2SandboxClient.delete expects a session made by EC2SandboxClient")
        try:
            await inner.shutdown()
        finally:
            try:
                await inner.session.delete()
            except EC2Error as exc:
                # Best effort, as the SDK's providers do: what is left, cleanup removes once it is old.
                log.warning("could not delete ec2-sandbox session %s: %s", inner.state.ec2_session_id, exc)
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """The session ``state`` names, reattached while it lives (files, /tmp, interpreter); if it is gone,
        a fresh one under the same id, whose workspace ``start()`` restores from ``state.snapshot``."""
        if not isinstance(state, EC2SandboxSessionState):
            raise TypeError("EC2SandboxClient.resume expects an EC2SandboxSessionState")
        state.assert_path_grants_rebound()
        _unsupported_manifest(state.manifest)
        work_dir, exists = await self._work_dir(state.ec2_session_id)
        if state.manifest.root != work_dir:
            # Another environment (or base dir) holds it now: the workspace is where the session is.
            state.manifest = state.manifest.model_copy(update={"root": work_dir}, deep=True)
            state.workspace_root_ready = False
        if not exists:
            state.workspace_root_ready = False
        inner = EC2SandboxSession(state=state, sandbox=self.sandbox)
        inner._set_start_state_preserved(exists, system=exists)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, EC2SandboxSessionState)
