"""The ``ssh`` transport against a private OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest
from support.runs import run_in_flight
from support.sshd import Sshd, requires_sshd, running_sshd, ssh_config

from ec2_sandbox import AsyncSandbox, SandboxConfig, protocol
from ec2_sandbox.errors import ConfigError, TransportError
from ec2_sandbox.plugins import get_registry
from ec2_sandbox.testing.conformance import ConformanceSuite
from ec2_sandbox.transports.ssh import (
    SERVICE,
    SERVICE_MARK,
    HostKeyPolicy,
    SSHTransport,
    create_ssh_transport,
)

pytestmark = requires_sshd


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as server:
        yield server


@pytest.fixture
def own_sshd() -> Iterator[Sshd]:
    """A server of the test's own, free to be killed, restarted or re-keyed."""
    with running_sshd() as server:
        yield server


@pytest.fixture
def known_hosts(tmp_path: Path) -> str:
    return str(tmp_path / "known_hosts")


def ssh_sandbox(config: SandboxConfig, persistent: bool = True) -> AsyncSandbox:
    """A sandbox over the runner service (default) or over one runner process per run."""
    transport = create_ssh_transport(config)
    transport.persistent_runner = persistent
    return AsyncSandbox(config, transport=transport)


@pytest.fixture
async def sandbox(sshd: Sshd, tmp_base_dir: str, known_hosts: str) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox(ssh_config(sshd, tmp_base_dir, known_hosts)) as sb:
        yield sb


@pytest.fixture(params=[True, False], ids=["service", "process-per-run"])
async def either_sandbox(
    request: pytest.FixtureRequest, sshd: Sshd, tmp_base_dir: str, known_hosts: str
) -> AsyncIterator[AsyncSandbox]:
    async with ssh_sandbox(ssh_config(sshd, tmp_base_dir, known_hosts), request.param) as sb:
        yield sb


class TestSSHConformance(ConformanceSuite):
    """Every behaviour the local transport shows, over a real SSH connection."""


# ---------------------------------------------------------------------------------------------- plumbing
def test_transports_are_registered_and_need_a_host() -> None:
    registry = get_registry()
    assert {"ssh", "eic"} <= set(registry.transports)
    with pytest.raises(ConfigError, match="ssh_host"):
        create_ssh_transport(SandboxConfig(transport="ssh"))


def test_no_user_data_in_the_command_line() -> None:
    transport = SSHTransport("127.0.0.1", user="root")
    assert transport._command("/root/.cache/ec2-sandbox/runner-ab12.py") == (
        "exec python3 -I -S /root/.cache/ec2-sandbox/runner-ab12.py"
    )
    digest = hashlib.sha256(protocol.runner_source(long_lived=True)).hexdigest()
    assert shlex.split(transport._command()) == [
        "exec",
        "python3",
        "-I",
        "-S",
        "-c",
        SERVICE,
        SERVICE_MARK,
        digest,
    ]
    transport.sudo = True
    assert transport._command("/home/u/x y/r.py") == "exec sudo -n -- python3 -I -S '/home/u/x y/r.py'"


async def test_many_runs_share_one_connection_and_one_runner_service(sandbox: AsyncSandbox) -> None:
    transport = sandbox.transport
    assert isinstance(transport, SSHTransport)
    assert (await sandbox.execute_code("print(0)")).stdout == "0\n"
    state = transport._state
    assert state is not None and state.service is not None
    service = state.service
    for i in range(1, 4):
        assert (await sandbox.execute_code(f"print({i})")).stdout == f"{i}\n"
    assert transport.connections_opened == 1
    assert transport._state is state and state.service is service and service.alive
    assert state.runner_path is None  # the service keeps the runner in memory: nothing installed


async def test_process_per_run_installs_the_runner_once(
    sshd: Sshd, tmp_base_dir: str, known_hosts: str
) -> None:
    async with ssh_sandbox(ssh_config(sshd, tmp_base_dir, known_hosts), persistent=False) as sb:
        for i in range(3):
            assert (await sb.execute_code(f"print({i})")).stdout == f"{i}\n"
        transport = sb.transport
        assert isinstance(transport, SSHTransport) and transport._state is not None
        assert transport.connections_opened == 1 and transport._state.service is None
        digest = hashlib.sha256(protocol.runner_source()).hexdigest()
        path = transport._state.runner_path
        assert path == str(Path.home() / ".cache" / "ec2-sandbox" / f"runner-{digest}.py")
        assert Path(path).read_bytes() == protocol.runner_source()


async def test_more_concurrent_runs_than_sshd_allows_sessions(sandbox: AsyncSandbox) -> None:
    # OpenSSH's MaxSessions is 10 by default: the 14 runs queue on one connection instead of failing.
    results = await asyncio.gather(*(sandbox.execute_code(f"print({i} * 2)") for i in range(14)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(14)]
    assert sandbox.transport.connections_opened == 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- streaming
async def test_streamed_output_arrives_complete_and_in_order(either_sandbox: AsyncSandbox) -> None:
    sandbox = either_sandbox
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    code = (
        "import sys\n"
        "for i in range(3000):\n"
        "    print('line %05d' % i, flush=True)\n"
        "    if i % 500 == 0: print('err %d' % i, file=sys.stderr, flush=True)\n"
    )
    result = await sandbox.execute_code(code, on_output=lambda s, c: chunks[s].append(c))
    assert result.success
    assert b"".join(chunks["stdout"]).decode() == "".join(f"line {i:05d}\n" for i in range(3000))
    assert b"".join(chunks["stderr"]).decode() == "".join(f"err {i}\n" for i in range(0, 3000, 500))


async def test_output_is_delivered_while_the_program_still_runs(
    sshd: Sshd, tmp_base_dir: str, known_hosts: str
) -> None:
    """Causal proof of liveness: the program waits for a file that the callback creates on its first line."""
    gate_dir = tempfile.mkdtemp(prefix="ec2sb-gate-", dir="/tmp")
    os.chmod(gate_dir, 0o755)
    gate = os.path.join(gate_dir, "go")
    seen: list[bytes] = []

    def on_output(stream: str, chunk: bytes) -> None:
        seen.append(chunk)
        if b"waiting" in chunk:
            Path(gate).touch()

    code = (
        "import os, sys, time\n"
        "print('waiting', flush=True)\n"
        "for _ in range(400):\n"
        f"    if os.path.exists({gate!r}): print('released'); sys.exit(0)\n"
        "    time.sleep(0.05)\n"
        "print('never released'); sys.exit(1)\n"
    )
    config = ssh_config(sshd, tmp_base_dir, known_hosts, isolation="none")
    try:
        async with AsyncSandbox(config) as sb:
            result = await sb.execute_code(code, on_output=on_output)
    finally:
        shutil.rmtree(gate_dir, ignore_errors=True)
    assert result.stdout == "waiting\nreleased\n", result
    assert b"".join(seen) == b"waiting\nreleased\n"


# ---------------------------------------------------------------------------------------------- files
async def test_50_mb_file_round_trips_by_checksum(sandbox: AsyncSandbox) -> None:
    code = (
        "import hashlib, os\n"
        "h = hashlib.sha256()\n"
        "with open('big.bin', 'wb') as fh:\n"
        "    for i in range(50):\n"
        "        block = hashlib.sha512(str(i).encode()).digest() * 16384\n"
        "        fh.write(block); h.update(block)\n"
        "print(h.hexdigest())\n"
    )
    result = await sandbox.execute_code(code)
    assert result.success, result.stderr
    expected = result.stdout.strip()
    data = await sandbox.get_task_files(result.task_hash, "big.bin")
    assert isinstance(data, bytes) and len(data) == 50 * 64 * 16384
    assert hashlib.sha256(data).hexdigest() == expected
    del data
    # The SFTP capability reads the same bytes in ranges.
    transport = sandbox.transport
    assert isinstance(transport, SSHTransport)
    path = os.path.join(result.working_directory, "big.bin")
    digest = hashlib.sha256()
    size = 50 * 64 * 16384
    for offset in range(0, size, 16 << 20):
        digest.update(await transport.read_file(path, offset, 16 << 20))
    assert digest.hexdigest() == expected


async def test_sftp_read_of_a_missing_path_is_a_transport_error(sandbox: AsyncSandbox) -> None:
    with pytest.raises(TransportError, match="cannot read /nonexistent"):
        await sandbox.transport.read_file("/nonexistent/file")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- failures
@pytest.mark.parametrize("persistent", [True, False], ids=["service", "process-per-run"])
async def test_killed_sshd_fails_the_run_in_flight_and_the_next_run_reconnects(
    own_sshd: Sshd, tmp_base_dir: str, known_hosts: str, persistent: bool
) -> None:
    async with ssh_sandbox(ssh_config(own_sshd, tmp_base_dir, known_hosts), persistent) as sb:
        assert (await sb.execute_code("print('warm')")).success
        run = await run_in_flight(sb, 8)
        own_sshd.kill()
        # A hang guard, not a timing assertion: the failure must come, and say what happened.
        with pytest.raises(TransportError, match="was lost while the runner was running"):
            await asyncio.wait_for(run, 60)
        with pytest.raises(TransportError, match="cannot open an SSH connection"):
            await sb.execute_code("print('down')")
        own_sshd.start()
        result = await sb.execute_code("print('back')")
        assert result.stdout == "back\n"
        assert sb.transport.connections_opened == 2  # type: ignore[attr-defined]


async def test_transport_timeout_fails_the_call_and_the_connection_stays_usable(
    either_sandbox: AsyncSandbox,
) -> None:
    sandbox = either_sandbox
    transport = sandbox.transport
    req = protocol.request(
        "run",
        sandbox.config.base_sandbox_dir,
        task_hash="ab" * 16,
        session_id=None,
        ephemeral=True,
        runtime=sandbox.runtime("sh").to_runner(),
        code_b64=protocol.b64(b"sleep 4"),
        files=[],
        env={},
        limits={"memory_mb": 256, "file_size_mb": 10, "open_files": 64, "processes": 16, "cpu_seconds": 30},
        timeout=4,
        inline_chars=1000,
        isolation="auto",
        network=False,
        stream=False,
    )
    with pytest.raises(TransportError, match="did not finish within 1 s"):
        await transport.exec_runner(json.dumps(req).encode(), timeout=1)
    assert (await sandbox.execute_code("print('still here')")).stdout == "still here\n"


def service_pids(server: Sshd) -> list[int]:
    """Runner service processes under ``server``, the test's own sshd: another test run's services on this
    machine are none of its business."""
    pids = []
    for pid in server.descendants():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SERVICE_MARK.encode() in argv:
            pids.append(pid)
    return pids


async def test_a_crashed_runner_service_fails_its_runs_and_is_restarted(
    sandbox: AsyncSandbox, sshd: Sshd
) -> None:
    transport = sandbox.transport
    assert isinstance(transport, SSHTransport)
    others = set(service_pids(sshd))  # services of other connections, still finishing their runs
    assert (await sandbox.execute_code("print('warm')")).success
    [pid] = set(service_pids(sshd)) - others
    run = await run_in_flight(sandbox, 5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TransportError, match=r"stopped .*before it answered"):
        await asyncio.wait_for(run, 60)
    assert (await sandbox.execute_code("print('again')")).stdout == "again\n"
    assert transport.connections_opened == 1
    assert len(set(service_pids(sshd)) - others - {pid}) == 1


async def test_wrong_key_is_refused_with_a_hint(
    sshd: Sshd, tmp_base_dir: str, known_hosts: str, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    config = ssh_config(sshd, tmp_base_dir, known_hosts, ssh_key_file=str(stranger))
    async with AsyncSandbox(config) as sb:
        with pytest.raises(TransportError, match=r"refused SSH authentication as .root.*authorized_keys"):
            await sb.execute_code("print(1)")
        status = await sb.instance_status()
    assert not status.healthy
    assert any(p.name == "ssh" and not p.ok for p in status.parts)


# ---------------------------------------------------------------------------------------------- host keys
async def test_host_key_trusted_on_first_use_then_pinned(
    own_sshd: Sshd, tmp_base_dir: str, known_hosts: str
) -> None:
    config = ssh_config(own_sshd, tmp_base_dir, known_hosts)
    async with AsyncSandbox(config) as sb:
        assert (await sb.execute_code("print(1)")).success
    recorded = Path(known_hosts).read_text().splitlines()
    expected = HostKeyPolicy.entry("127.0.0.1", own_sshd.port, own_sshd.host_key).strip()
    assert recorded == [expected]
    # Known now: a strict client accepts it, and nothing new is recorded.
    async with AsyncSandbox(config.model_copy(update={"ssh_strict_host_keys": True})) as sb:
        assert (await sb.execute_code("print(2)")).success
    assert Path(known_hosts).read_text().splitlines() == [expected]

    # The server is re-keyed: refused, with a message that explains, strict or not.
    own_sshd.kill()
    new_key = own_sshd.new_host_key()
    own_sshd.start()
    for strict in (False, True):
        async with AsyncSandbox(config.model_copy(update={"ssh_strict_host_keys": strict})) as sb:
            with pytest.raises(TransportError) as caught:
                await sb.execute_code("print(3)")
        message = str(caught.value)
        assert "has CHANGED" in message and known_hosts in message
        assert new_key.get_fingerprint("sha256") in message
        assert new_key.get_fingerprint("sha256") != recorded_fingerprint(expected)
    assert Path(known_hosts).read_text().splitlines() == [expected]


def recorded_fingerprint(entry: str) -> str:
    return asyncssh.import_public_key(" ".join(entry.split()[1:])).get_fingerprint("sha256")


async def test_strict_mode_refuses_an_unknown_host(sshd: Sshd, tmp_base_dir: str, known_hosts: str) -> None:
    config = ssh_config(sshd, tmp_base_dir, known_hosts, ssh_strict_host_keys=True)
    async with AsyncSandbox(config) as sb:
        with pytest.raises(TransportError, match=r"is not in .*strict host key checking is on") as caught:
            await sb.execute_code("print(1)")
    # The message carries the exact line to add once the fingerprint is verified.
    line = HostKeyPolicy.entry("127.0.0.1", sshd.port, sshd.host_key).strip()
    assert line in str(caught.value)
    assert not Path(known_hosts).exists()
    Path(known_hosts).write_text(line + "\n")
    async with AsyncSandbox(config) as sb:
        assert (await sb.execute_code("print(1)")).stdout == "1\n"


async def test_transport_closed_refuses_new_runs(sandbox: AsyncSandbox) -> None:
    assert (await sandbox.execute_code("print(1)")).success
    await sandbox.transport.aclose()
    with pytest.raises(TransportError, match="is closed"):
        await sandbox.execute_code("print(1)")


# ---------------------------------------------------------------------------------------------- CLI
async def test_cli_exec_prints_output_live_over_ssh(sshd: Sshd, tmp_base_dir: str, known_hosts: str) -> None:
    """`ec2-sandbox exec` shows each line as it comes: the program only goes on once we have seen it."""
    gate_dir = tempfile.mkdtemp(prefix="ec2sb-gate-", dir="/tmp")
    os.chmod(gate_dir, 0o755)
    gate = os.path.join(gate_dir, "go")
    code = (
        "import os, sys, time\n"
        "print('waiting', flush=True)\n"
        "for _ in range(400):\n"
        f"    if os.path.exists({gate!r}): print('released'); sys.exit(7)\n"
        "    time.sleep(0.05)\n"
        "print('never released'); sys.exit(1)\n"
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("EC2_SANDBOX_") or k == "EC2_SANDBOX_NO_SKIPS"
    }
    env.update(
        EC2_SANDBOX_TRANSPORT="ssh",
        EC2_SANDBOX_SSH_HOST="127.0.0.1",
        EC2_SANDBOX_SSH_PORT=str(sshd.port),
        EC2_SANDBOX_SSH_USER="root",
        EC2_SANDBOX_SSH_KEY_FILE=str(sshd.client_key_path),
        EC2_SANDBOX_SSH_KNOWN_HOSTS=known_hosts,
        EC2_SANDBOX_BASE_SANDBOX_DIR=tmp_base_dir,
        EC2_SANDBOX_ISOLATION="none",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ec2_sandbox.cli",
        "exec",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first == b"waiting\n"
        Path(gate).touch()
        rest, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
        shutil.rmtree(gate_dir, ignore_errors=True)
    assert rest == b"released\n", err
    assert proc.returncode == 7


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo not installed (Debian package sudo)")
async def test_ssh_sudo_starts_the_runner_through_sudo(
    sshd: Sshd, tmp_base_dir: str, known_hosts: str
) -> None:
    """``ssh_sudo``: the login user's runner goes through ``sudo -n`` (here root to root: the path works)."""
    config = ssh_config(sshd, tmp_base_dir, known_hosts, ssh_sudo=True)
    for persistent in (True, False):
        async with ssh_sandbox(config, persistent) as sb:
            others = set(service_pids(sshd))
            result = await sb.execute_code("print('via sudo')")
            assert result.stdout == "via sudo\n", result
            if persistent:
                # sudo and, under it, the python3 it started (both carry the service's argv).
                pids = set(service_pids(sshd)) - others
                comm = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
                [python] = [pid for pid in pids if comm[pid] != "sudo"]
                ppid = int(Path(f"/proc/{python}/stat").read_text().rsplit(")", 1)[1].split()[1])
                assert comm.get(ppid) == "sudo"
            status = await sb.instance_status()
            assert status.healthy, status
            probe = next(p for p in status.parts if p.name == "probe")
            assert probe.details["privileged"] is True
