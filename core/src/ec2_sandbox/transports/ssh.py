"""The ``ssh`` transport: the runner over one persistent SSH connection (asyncssh).

One connection is opened on first use and kept. On it, one long-lived "runner service" channel runs
``python3 -I -S -c <fixed loader>``: the loader receives the runner's source over stdin (checked against
the SHA-256 on its command line), then serves requests - one JSON line each, many in flight, each handled
on its own thread, its stream events and envelope sent back tagged with the request's id. A warm run
therefore costs one round trip, not a process start (and not the login shell that every SSH command
starts). No user data ever appears in a command line.

With ``persistent_runner=False`` (or for a request that is not one line) each run gets a channel and a
runner process of its own instead: the runner is copied once per connection to
``~/.cache/ec2-sandbox/runner-<sha256>.py`` (atomically) and started as ``python3 -I -S <that path>`` with
the request on stdin. sshd's MaxSessions bounds channels per connection, so such runs queue beyond 8.

Host keys are trusted on first use and recorded in a known-hosts file under the user's cache dir (or a file
the configuration names); ``ssh_strict_host_keys`` refuses unknown keys instead, and a key that differs from
the recorded one is always refused with a message that says why and what to do.

A connection that drops fails the runs in flight with a :class:`TransportError` (never a hang); the next run
opens a new connection. :mod:`ec2_sandbox.transports.eic` builds on this class: it only changes how a
connection is opened (an ephemeral key pushed through EC2 Instance Connect, optionally over an EIC Endpoint
tunnel).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from ..errors import ConfigError, TransportError
from ..protocol import runner_sha256, runner_source
from ..schema import StatusPart
from .base import LineCallback, RunnerOutput, Transport

log = logging.getLogger(__name__)

#: Where the runner is kept on the target, relative to the login user's home.
REMOTE_CACHE = ".cache/ec2-sandbox"
READ_CHUNK = 1 << 16
#: Concurrent channels per connection; OpenSSH's MaxSessions default is 10, one is kept for status/files.
MAX_CHANNELS = 8


def default_known_hosts() -> Path:
    """``$XDG_CACHE_HOME/ec2-sandbox/known_hosts`` (``~/.cache/...`` when the variable is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ec2-sandbox" / "known_hosts"


def host_pattern(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


class HostKeyPolicy:
    """Trust on first use, strict mode, and refusal of changed keys, over an OpenSSH known_hosts file."""

    def __init__(self, path: str | Path | None = None, strict: bool = False) -> None:
        self.path = Path(path).expanduser() if path else default_known_hosts()
        self.strict = strict

    def known_keys(self, host: str, addr: str, port: int) -> list[asyncssh.SSHKey]:
        """Keys recorded for ``host`` (patterns and hashed entries match as in OpenSSH)."""
        try:
            known = asyncssh.read_known_hosts(str(self.path))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the known-hosts file {self.path}: {exc}") from None
        return list(known.match(host, addr, port if port != 22 else None)[0])

    def changed_message(self, host: str, port: int, key: asyncssh.SSHKey, known: Sequence[Any]) -> str:
        recorded = ", ".join(fingerprint(k) for k in known)
        return (
            f"the SSH host key of {host_pattern(host, port)} has CHANGED: the server presented "
            f"{fingerprint(key)}, but {self.path} records {recorded} for it. Someone may be intercepting "
            "the connection - or the host was rebuilt (instance replaced, sshd host keys regenerated). "
            f"Refusing to connect. If you know why the key changed, delete the line for "
            f"{host_pattern(host, port)} from {self.path} and connect again."
        )

    def unknown_message(self, host: str, port: int, key: asyncssh.SSHKey) -> str:
        line = self.entry(host, port, key).strip()
        return (
            f"the SSH host key of {host_pattern(host, port)} ({fingerprint(key)}) is not in {self.path} "
            "and strict host key checking is on (ssh_strict_host_keys). Verify the fingerprint out of band "
            "(for EC2: the instance's console output lists its host keys), then add this line to that "
            f"file: {line}"
        )

    @staticmethod
    def entry(host: str, port: int, key: asyncssh.SSHKey) -> str:
        """One known_hosts line: ``pattern algorithm base64``."""
        algorithm, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
        return f"{host_pattern(host, port)} {algorithm} {blob}\n"

    def record(self, host: str, port: int, key: asyncssh.SSHKey) -> None:
        """Append ``key`` for ``host`` unless an entry already matches (concurrent connects race here)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a+", encoding="ascii") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            entry = self.entry(host, port, key)
            if entry not in fh.read().splitlines(keepends=True):
                fh.write(entry)
        log.info(
            "recorded the host key of %s in %s: %s", host_pattern(host, port), self.path, fingerprint(key)
        )


class _Client(asyncssh.SSHClient):
    """Decides on host keys the recorded list did not already accept, and remembers why it refused."""

    def __init__(self, policy: HostKeyPolicy, host: str, port: int, known: list[asyncssh.SSHKey]) -> None:
        self.policy, self.host, self.port, self.known = policy, host, port, known
        self.refusal: str | None = None
        self.accepted: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        if self.known:
            self.refusal = self.policy.changed_message(self.host, self.port, key, self.known)
            return False
        if self.policy.strict:
            self.refusal = self.policy.unknown_message(self.host, self.port, key)
            return False
        # Recorded only once the server has proven it holds the private key (after the handshake).
        self.accepted = key
        return True


#: The runner service: started once per connection, it receives the runner's source first (length line,
#: bytes; checked against the digest on its command line), then serves requests on its stdin, each on its
#: own thread (as the local transport does in-process). Lines both ways are ``<id> <json>``.
#: Fixed text - Python 3.8, stdlib only. Nothing is written on the target for it.
SERVICE_MARK = "ec2-sandbox-runner-service"
SERVICE = r"""
import hashlib, json, os, sys, threading, types
stdin = sys.stdin.buffer
source = stdin.read(int(stdin.readline()))
if hashlib.sha256(source).hexdigest() != sys.argv[2]:
    sys.stderr.write("the runner's source arrived damaged\n")
    sys.exit(2)
runner = types.ModuleType("ec2_sandbox_runner")
runner.__dict__["RUNNER_SOURCE"] = source  # for the session hosts it starts
sys.modules["ec2_sandbox_runner"] = runner
exec(compile(source, "ec2_sandbox_runner.py", "exec"), runner.__dict__)
runner.become_subreaper()  # it reaps what its runs leave behind, bubblewrap's pid 1 among them
try:
    # Probe bubblewrap once before requests run side by side (each would otherwise probe it on its own).
    bwrap = runner.find_bwrap()
    if bwrap:
        runner.bwrap_works(bwrap, runner.RESERVED_UID if os.geteuid() == 0 else None)
except Exception:
    pass
out = sys.stdout.buffer
lock = threading.Lock()
def send(rid, text):
    data = ("%d " % rid).encode() + text.encode("utf-8") + b"\n"
    with lock:
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):
            pass
def serve(rid, raw):
    try:
        req = json.loads(raw.decode("utf-8"))
        emit = lambda event: send(rid, json.dumps({"event": event}, separators=(",", ":")))
        text = runner.respond(req, emit)
    except Exception as exc:
        error = {"kind": "protocol", "message": "bad request: %s: %s" % (type(exc).__name__, exc)}
        text = json.dumps({"envelope": {"ok": False, "error": error}})
    send(rid, text)
for line in stdin:
    rid, _, raw = line.partition(b" ")
    threading.Thread(target=serve, args=(int(rid), raw)).start()
"""


class _NotStarted(TransportError):
    """The connection turned out dead before anything was sent: safe to try again."""


@dataclass
class _Call:
    lines: list[bytes]
    on_line: LineCallback | None
    future: asyncio.Future[None]


class _RunnerService:
    """One long-lived runner process on the target; many requests in flight over its single channel."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess,
        lost: Any,
        target: str,
    ) -> None:
        self.conn = conn
        self.process = process
        self.target = target
        self._lost = lost
        self.calls: dict[int, _Call] = {}
        self.next_id = 0
        self.error: TransportError | None = None
        self.stderr = bytearray()
        self._tasks = [asyncio.ensure_future(self._read_stdout()), asyncio.ensure_future(self._read_stderr())]

    async def request(self, payload: bytes, timeout: float, on_line: LineCallback | None) -> list[bytes]:
        if self.error is not None:
            raise self.error
        self.next_id += 1
        rid = self.next_id
        call = _Call([], on_line, asyncio.get_running_loop().create_future())
        self.calls[rid] = call
        try:
            async with asyncio.timeout(timeout):
                # Three writes, no await between them: the line cannot interleave with another request's.
                self.process.stdin.write(b"%d " % rid)
                self.process.stdin.write(payload)
                self.process.stdin.write(b"\n")
                await self.process.stdin.drain()
                await call.future
        except TimeoutError:
            raise TransportError(
                f"the runner on {self.target} did not finish within {timeout:.0f} s (its own time limit "
                "still applies on the target)"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise self._fail(exc) from None
        finally:
            self.calls.pop(rid, None)
        return call.lines

    def _route(self, line: bytes) -> None:
        rid, _, body = line.partition(b" ")
        try:
            call = self.calls.get(int(rid))
        except ValueError:
            log.debug("ignoring a malformed line from the runner service on %s", self.target)
            return
        if call is None or call.future.done():
            return  # a request given up on (timeout, cancellation)
        call.lines.append(body)
        if body.startswith(b'{"envelope"'):
            call.future.set_result(None)
        elif call.on_line is not None:
            try:
                call.on_line(body[:-1])
            except Exception:
                log.exception("an output callback failed")

    async def _read_stdout(self) -> None:
        pending: list[bytes] = []
        error: BaseException | None = None
        try:
            while chunk := await self.process.stdout.read(READ_CHUNK):
                start = 0
                while (nl := chunk.find(b"\n", start)) >= 0:
                    self._route(b"".join((*pending, chunk[start : nl + 1])))
                    pending.clear()
                    start = nl + 1
                pending.append(chunk[start:])
        except (OSError, asyncssh.Error) as exc:
            error = exc
        # Let stderr drain so that a crash can be explained.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._tasks[1]), 2)
        self._fail(error)

    async def _read_stderr(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            while chunk := await self.process.stderr.read(READ_CHUNK):
                self.stderr += chunk
                del self.stderr[:-8192]

    def _fail(self, exc: BaseException | None) -> TransportError:
        if self.error is None:
            if exc is not None or self.conn.is_closed():
                self.error = self._lost(exc)
            else:
                detail = self.stderr.decode("utf-8", "replace").strip()[-2000:] or "(no stderr)"
                status = self.process.exit_status
                self.error = TransportError(
                    f"the runner on {self.target} stopped (exit status {status}) before it answered: {detail}"
                )
        for call in list(self.calls.values()):
            if not call.future.done():
                call.future.set_exception(self.error)
                call.future.exception()  # retrieved here: a caller that gave up must not log it
        return self.error

    @property
    def alive(self) -> bool:
        return self.error is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.process.close()


@dataclass
class _Connection:
    conn: asyncssh.SSHClientConnection
    loop: asyncio.AbstractEventLoop
    #: Where the runner file is on the target: installed on first need (one runner process per run).
    runner_path: str | None = None
    opened: float = field(default_factory=time.monotonic)
    #: Monotonic time after which no new run should start on it (EIC Endpoint tunnels end).
    deadline: float | None = None
    closers: list[Any] = field(default_factory=list)
    #: sshd allows MaxSessions (default 10) channels per connection: runs beyond that wait their turn.
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CHANNELS))
    service: _RunnerService | None = None
    service_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def usable(self) -> bool:
        return not self.conn.is_closed() and self.loop is asyncio.get_running_loop()


def _text(output: bytes | str | None) -> str:
    """A finished command's output as text. Run with ``encoding=None`` it is bytes; asyncssh's type names
    the str of a command run with an encoding too."""
    if isinstance(output, str):
        return output
    return (output or b"").decode("utf-8", "replace")


class SSHTransport(Transport):
    """The runner over a persistent SSH connection to any Linux host with python3."""

    name = "ssh"
    supports_streaming = True

    # A property over the base's class attribute, as it follows persistent_runner (which may change):
    # mypy rejects a read-only property in place of a writable attribute.
    @property
    def supports_warm_start(self) -> bool:  # type: ignore[override]
        """The connection's runner service lives on between runs: it keeps a zygote (see zygote.py)."""
        return self.persistent_runner

    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str,
        key_file: str | None = None,
        client_keys: Sequence[asyncssh.SSHKey] | None = None,
        use_agent: bool = True,
        host_keys: HostKeyPolicy | None = None,
        host_key_alias: str | None = None,
        sudo: bool = False,
        persistent_runner: bool = True,
        connect_timeout: float = 20.0,
        keepalive_interval: float = 15.0,
    ) -> None:
        self.host, self.port, self.user = host, port, user
        self.key_file = key_file
        self._client_keys = list(client_keys) if client_keys is not None else None
        self.use_agent = use_agent
        self.host_keys = host_keys or HostKeyPolicy()
        self.host_key_alias = host_key_alias
        self.sudo = sudo
        self.persistent_runner = persistent_runner
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self._state: _Connection | None = None
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._closed = False
        self.connections_opened = 0
        self._tasks: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ identity
    @property
    def target(self) -> str:
        return f"{self.user}@{host_pattern(self.host, self.port)}"

    @property
    def host_key_name(self) -> str:
        """The name host keys are recorded under (an instance id for EIC: its address may change)."""
        return self.host_key_alias or self.host

    # ------------------------------------------------------------------ connecting
    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            self._locks = {loop: asyncio.Lock()}
            lock = self._locks[loop]
        return lock

    async def _client_keys_for_connection(self) -> list[asyncssh.SSHKey] | None:
        """Keys offered by the next connection (None: the key file, the agent, ~/.ssh defaults)."""
        if self._client_keys is not None:
            return self._client_keys
        if self.key_file:
            path = os.path.expanduser(self.key_file)
            try:
                return [asyncssh.read_private_key(path)]
            except (OSError, asyncssh.KeyImportError) as exc:
                raise ConfigError(f"cannot load the SSH private key {path}: {exc}") from None
        return None

    async def _prepare(self) -> tuple[str, int, dict[str, Any]]:
        """Where to connect and any extra ``asyncssh.connect`` arguments; subclasses push keys, tunnel."""
        return self.host, self.port, {}

    def _deadline(self) -> float | None:
        return None

    async def _open(self) -> _Connection:
        host, port, extra = await self._prepare()
        closers = extra.pop("_closers", [])
        try:
            return await self._connect(host, port, extra, closers)
        except BaseException:
            # Whatever failed (host keys, client keys, the connection, a cancellation), a tunnel opened for
            # this attempt must not stay open.
            for close in closers:
                await close()
            raise

    async def _connect(
        self, host: str, port: int, extra: dict[str, Any], closers: list[Callable[[], Awaitable[None]]]
    ) -> _Connection:
        known = await asyncio.to_thread(self.host_keys.known_keys, self.host_key_name, host, self.port)
        client = _Client(self.host_keys, self.host_key_name, self.port, known)
        keys = await self._client_keys_for_connection()
        options: dict[str, Any] = {
            "username": self.user,
            "known_hosts": (known, [], []),
            "client_factory": lambda: client,
            "config": None,
            "connect_timeout": self.connect_timeout,
            "login_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive_interval,
            "keepalive_count_max": 3,
            "agent_forwarding": False,
            "x11_forwarding": False,
            "ignore_encrypted": True,
        }
        if keys is not None:
            options["client_keys"] = keys
            options["agent_path"] = None
        elif not self.use_agent:
            options["agent_path"] = None
        options.update(extra)
        try:
            conn = await asyncssh.connect(host, port, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise TransportError(client.refusal or f"{self.target}: host key not verifiable: {exc}") from None
        except asyncssh.PermissionDenied as exc:
            raise TransportError(
                f"{self.target} refused SSH authentication as {self.user!r}: {exc.reason}. "
                + self._auth_hint()
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            if client.refusal:
                raise TransportError(client.refusal) from None
            raise TransportError(
                f"cannot open an SSH connection to {self.target}: {type(exc).__name__}: {exc}"
            ) from None
        if client.accepted is not None:
            await asyncio.to_thread(self.host_keys.record, self.host_key_name, self.port, client.accepted)
        self.connections_opened += 1
        log.debug("SSH connection %d to %s open", self.connections_opened, self.target)
        return _Connection(conn, asyncio.get_running_loop(), deadline=self._deadline(), closers=closers)

    def _auth_hint(self) -> str:
        if self.key_file:
            return f"Check that the public half of {self.key_file} is in the user's authorized_keys."
        return "Set ssh_key_file, or load a key the server accepts into your SSH agent."

    async def _install_runner(self, conn: asyncssh.SSHClientConnection) -> str:
        """Copy the runner into the target's cache once (atomically) and return its absolute path."""
        source = runner_source()
        digest = runner_sha256()
        # Fixed text only: the file name is a hex digest, the rest is literal.
        script = (
            f'd="$HOME/{REMOTE_CACHE}"; f="$d/runner-{digest}.py"; '
            'if [ -s "$f" ]; then cat >/dev/null; else '
            'umask 077 && mkdir -p "$d" && t="$f.tmp.$$" && cat >"$t" && mv -f "$t" "$f" || exit 1; fi; '
            'printf "%s\\n" "$f"'
        )
        try:
            result = await asyncio.wait_for(
                conn.run(script, input=source, encoding=None, check=False), self.connect_timeout
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise TransportError(f"cannot install the runner on {self.target}: {exc}") from None
        path = _text(result.stdout).strip()
        if result.exit_status != 0 or not path.startswith("/"):
            err = _text(result.stderr).strip()
            raise TransportError(
                f"cannot install the runner on {self.target} (exit {result.exit_status}): {err or path}"
            )
        return path

    async def _connection(self, needed: float = 0.0) -> _Connection:
        """The open connection, or a new one; ``needed`` seconds must fit before its deadline."""
        if self._closed:
            raise TransportError(f"the SSH transport to {self.target} is closed")
        async with self._lock():
            state = self._state
            if state is not None and state.usable:
                if state.deadline is None or time.monotonic() + needed < state.deadline:
                    return state
                log.debug("rotating the connection to %s: its tunnel ends before the run could", self.target)
                self._retire(state)
            elif state is not None:
                self._retire(state)
            self._state = await self._open()
            return self._state

    def _retire(self, state: _Connection) -> None:
        """Stop using a connection: closed at once if dead, else once its channels end (old loop: dropped)."""
        if self._state is state:
            self._state = None
        try:
            same_loop = state.loop is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        if not same_loop:
            return
        if state.conn.is_closed():
            self._track(self._close_state(state))
            return

        def busy() -> bool:
            service = state.service
            calls = len(service.calls) if service is not None and service.alive else 0
            idle_channels = 1 if service is not None and service.alive else 0
            return calls > 0 or len(getattr(state.conn, "_channels", ())) > idle_channels

        async def close_when_idle() -> None:
            # A tunnel rotated for its deadline still carries runs that fit: let them finish.
            while busy() and not state.conn.is_closed():
                await asyncio.sleep(0.5)
            await self._close_state(state)

        self._track(close_when_idle())

    def _track(self, coro: Any) -> None:
        """Keep a reference to a background task until it ends (the loop only holds weak ones)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close_state(state: _Connection) -> None:
        state.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.conn.wait_closed(), 5)
        for close in state.closers:
            with contextlib.suppress(Exception):
                await close()

    # ------------------------------------------------------------------ running
    def _command(self, runner_path: str | None = None) -> str:
        """The runner (a file on the target) or, without a path, the runner service. Fixed text only."""
        if runner_path is None:
            digest = runner_sha256(long_lived=True)
            argv = ["python3", "-I", "-S", "-c", SERVICE, SERVICE_MARK, digest]
        else:
            argv = ["python3", "-I", "-S", runner_path]
        if self.sudo:
            argv = ["sudo", "-n", "--", *argv]
        return "exec " + shlex.join(argv)

    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        """Run one request: on the connection's runner service, or (``persistent_runner=False``, or a
        payload that is not one line) as a runner process of its own on a new channel."""
        for attempt in (1, 2):
            state = await self._connection(timeout)
            try:
                if self.persistent_runner and b"\n" not in payload:
                    service = await self._service(state)
                    try:
                        lines = await service.request(payload, timeout, on_stdout_line)
                    except TransportError:
                        if not state.usable:
                            self._retire(state)
                        raise
                    return RunnerOutput(0, b"".join(lines), b"")
                async with state.slots:
                    if state.runner_path is None:
                        state.runner_path = await self._install_runner(state.conn)
                    process = await self._open_channel(state, self._command(state.runner_path))
                    return await self._drive(state, process, payload, timeout, on_stdout_line)
            except _NotStarted as exc:
                # Nothing ran: the connection had died unnoticed. Once more, over a fresh one.
                if attempt == 2:
                    raise TransportError(str(exc)) from None
                log.debug("%s; reconnecting", exc)
        raise AssertionError("unreachable")

    async def _open_channel(self, state: _Connection, command: str) -> asyncssh.SSHClientProcess:
        try:
            return await state.conn.create_process(command, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            if not state.conn.is_closed():
                raise TransportError(f"{self.target} refused a new SSH channel: {exc}") from None
            self._retire(state)
            raise _NotStarted(
                f"the SSH connection to {self.target} closed before the runner started"
            ) from None

    async def _service(self, state: _Connection) -> _RunnerService:
        async with state.service_lock:
            if state.service is None or not state.service.alive:
                if state.service is not None:
                    state.service.close()
                process = await self._open_channel(state, self._command())
                source = runner_source(long_lived=True)
                process.stdin.write(b"%d\n" % len(source))
                process.stdin.write(source)
                state.service = _RunnerService(state.conn, process, self._lost, self.target)
            return state.service

    async def _drive(
        self,
        state: _Connection,
        process: asyncssh.SSHClientProcess,
        payload: bytes,
        timeout: float,
        on_stdout_line: LineCallback | None,
    ) -> RunnerOutput:
        lines: list[bytes] = []
        errors: list[bytes] = []

        async def feed() -> None:
            process.stdin.write(payload)
            process.stdin.write_eof()
            await process.stdin.drain()

        async def pump_stdout() -> None:
            # Split lines ourselves: scanning only each new chunk keeps a multi-megabyte line linear.
            pending: list[bytes] = []
            while True:
                chunk = await process.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    if nl < 0:
                        pending.append(chunk[start:])
                        break
                    line = b"".join((*pending, chunk[start : nl + 1]))
                    pending.clear()
                    lines.append(line)
                    if on_stdout_line is not None:
                        on_stdout_line(line[:-1])
                    start = nl + 1
            if pending:
                lines.append(b"".join(pending))

        async def pump_stderr() -> None:
            while chunk := await process.stderr.read(READ_CHUNK):
                errors.append(chunk)

        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(feed(), pump_stdout(), pump_stderr())
                await process.wait_closed()
        except TimeoutError:
            self._abandon(process)
            raise TransportError(
                f"the runner on {self.target} did not finish within {timeout:.0f} s; its channel was closed"
            ) from None
        except asyncio.CancelledError:
            self._abandon(process)
            raise
        except (OSError, asyncssh.Error) as exc:
            self._abandon(process)
            self._retire(state)
            raise self._lost(exc) from None
        if process.exit_status is None and process.exit_signal is None:
            self._retire(state)
            raise self._lost(None)
        status = process.exit_status
        if status is None:
            signame = process.exit_signal[0] if process.exit_signal else "?"
            errors.append(f"\n[the runner was killed by signal {signame}]".encode())
            status = 255
        return RunnerOutput(status, b"".join(lines), b"".join(errors))

    def _lost(self, exc: BaseException | None) -> TransportError:
        why = f" ({exc})" if exc else ""
        return TransportError(
            f"the SSH connection to {self.target} was lost while the runner was running{why}. The run's "
            "outcome is unknown (it may still finish on the target); the next call reconnects."
        )

    @staticmethod
    def _abandon(process: asyncssh.SSHClientProcess) -> None:
        # TERM lets the runner kill its program's process group; closing frees the channel either way.
        with contextlib.suppress(Exception):
            process.send_signal("TERM")
        with contextlib.suppress(Exception):
            process.close()

    # ------------------------------------------------------------------ files
    async def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of an absolute path on the target over SFTP (a capability for large transfers).

        This reads with the login user's rights and follows symlinks: callers pass paths they resolved
        through the runner, never a path a sandboxed program could have redirected.
        """
        state = await self._connection()
        try:
            async with state.conn.start_sftp_client() as sftp, sftp.open(path, "rb") as fh:
                await fh.seek(offset)
                return await fh.read(-1 if length is None else length)
        except asyncssh.SFTPError as exc:
            raise TransportError(f"cannot read {path} on {self.target}: {exc.reason}") from None
        except (OSError, asyncssh.Error) as exc:
            self._retire(state)
            raise self._lost(exc) from None

    # ------------------------------------------------------------------ health
    async def status_parts(self) -> list[StatusPart]:
        started = time.monotonic()
        try:
            state = await self._connection()
            async with state.slots:
                result = await asyncio.wait_for(state.conn.run("true", check=False), self.connect_timeout)
        except (TransportError, ConfigError, OSError, asyncssh.Error, TimeoutError) as exc:
            return [StatusPart(name="ssh", ok=False, message=f"SSH to {self.target} failed: {exc}")]
        elapsed = time.monotonic() - started
        key = state.conn.get_server_host_key()
        return [
            StatusPart(
                name="ssh",
                ok=result.exit_status == 0,
                message=f"SSH to {self.target} works ({elapsed * 1000:.0f} ms)",
                details={
                    "server_version": state.conn.get_extra_info("server_version"),
                    "host_key": fingerprint(key) if key else None,
                    "known_hosts": str(self.host_keys.path),
                    "runner": "service" if self.persistent_runner else state.runner_path,
                    "connections_opened": self.connections_opened,
                },
            )
        ]

    async def aclose(self) -> None:
        self._closed = True
        state, self._state = self._state, None
        if state is not None:
            try:
                same_loop = state.loop is asyncio.get_running_loop()
            except RuntimeError:
                same_loop = False
            if same_loop:
                await self._close_state(state)


def host_key_policy(config: Any) -> HostKeyPolicy:
    return HostKeyPolicy(
        getattr(config, "ssh_known_hosts", None), strict=bool(getattr(config, "ssh_strict_host_keys", False))
    )


def create_ssh_transport(config: Any) -> SSHTransport:
    """Factory for ``transport: "ssh"``: ``ssh_host`` is required; the key file or the agent authenticates."""
    if not config.ssh_host:
        raise ConfigError("transport 'ssh' needs ssh_host (the machine to connect to)")
    return SSHTransport(
        config.ssh_host,
        port=config.ssh_port,
        user=config.ssh_user,
        key_file=config.ssh_key_file,
        host_keys=host_key_policy(config),
        sudo=bool(getattr(config, "ssh_sudo", False)),
    )
