"""The LangChain tools' synchronous path over a real SSH connection: one connection for many calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.sshd import Sshd, requires_sshd, running_sshd, ssh_config

from ec2_sandbox import Sandbox
from ec2_sandbox_langchain import create_langchain_tools

pytestmark = requires_sshd

#: TCP state ESTABLISHED in /proc/net/tcp.
ESTABLISHED = "01"


@pytest.fixture
def sshd() -> Iterator[Sshd]:
    """A server of the test's own: its log and its sockets show this test's connections only."""
    with running_sshd() as server:
        yield server


def logins(server: Sshd) -> int:
    """Connections sshd accepted, from its own log (LogLevel VERBOSE names every accepted key)."""
    return server.log_path.read_text(errors="replace").count("Accepted publickey for root")


def open_connections(server: Sshd) -> int:
    """Connections open on the server's side: established sockets whose local port is sshd's."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            local, _remote, state = line.split()[1:4]
            if state == ESTABLISHED and int(local.rsplit(":", 1)[1], 16) == server.port:
                count += 1
    return count


@pytest.mark.parametrize("given", ["config", "sandbox"])
def test_many_sync_calls_use_one_connection(
    sshd: Sshd, tmp_base_dir: str, tmp_path: Path, given: str
) -> None:
    config = ssh_config(sshd, tmp_base_dir, tmp_path / "known_hosts")
    own = Sandbox(config)
    tools = create_langchain_tools(config if given == "config" else own)
    execute, status = tools[0], tools[3]
    try:
        for i in range(8):
            content = execute.invoke({"code": f"print({i} * 7)"})
            assert f"\n{i * 7}\n" in content[0]["text"], content[0]["text"]
        assert "healthy" in status.invoke({})[0]["text"]
        if given == "sandbox":  # the caller's own sync calls share the tools' loop, hence the connection
            assert own.execute_code("print('mine')").stdout == "mine\n"
        assert logins(sshd) == 1, sshd.log()
        assert open_connections(sshd) == 1
    finally:
        tools[0].sync_sandbox.close()
    deadline = time.monotonic() + 5  # the server's side ends once it has read the client's close
    while open_connections(sshd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_connections(sshd) == 0
