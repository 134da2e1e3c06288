"""Attacks on the network, on other processes and on the runner itself; output that tries to break the result.

Network tests only ever talk to a server this test starts on 127.0.0.1: a run without network gets a fresh
network namespace whose loopback is its own, so reaching the host's 127.0.0.1 proves a leak. No test sends
traffic anywhere else, the metadata address included.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from ec2_sandbox import runner

from .conftest import Box, LoopbackServer, needs_node

CONNECT = """
import socket
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
        s.sendall(b"leak {marker}")
        print("CONNECTED", s.recv(16))
except OSError as exc:
    print("blocked", type(exc).__name__)
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
"""


async def test_network_access_when_disabled(box: Box, loopback_server: LoopbackServer) -> None:
    result = await box.run(CONNECT.format(port=loopback_server.port, marker=box.marker))
    assert result.success, result
    assert "blocked ConnectionRefusedError" in result.stdout, result.stdout
    assert "interfaces ['lo']" in result.stdout  # a namespace of its own: only a loopback
    assert loopback_server.received == []
    assert "network:off" in result.limits_enforced
    await box.assert_recovers()


async def test_network_access_when_disabled_shell(box: Box, loopback_server: LoopbackServer) -> None:
    code = f"exec 3<>/dev/tcp/127.0.0.1/{loopback_server.port} && echo CONNECTED || echo blocked"
    result = await box.run(code, "bash")
    assert "blocked" in result.stdout and "CONNECTED" not in result.stdout, result
    assert loopback_server.received == []
    await box.assert_recovers()


async def test_network_allowed_connects(box: Box, loopback_server: LoopbackServer) -> None:
    online = box.with_config(network=True)
    result = await online.run(CONNECT.format(port=loopback_server.port, marker=box.marker))
    assert result.success, result
    assert "CONNECTED b'pong'" in result.stdout, result.stdout
    assert loopback_server.received == [f"leak {box.marker}".encode()]
    assert "network:on" in result.limits_enforced
    await box.assert_recovers()


async def test_metadata_guard_missing_is_reported(
    box: Box, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # Checked from a marker file only: nothing here (or in the runner) sends traffic to the metadata address.
    online = box.with_config(network=True)
    monkeypatch.setattr(runner, "IMDS_MARKER", str(tmp_path / "imds-blocked"))
    monkeypatch.setattr(runner, "on_ec2", lambda: True)
    envelope = await box.raw_run(network=True)
    assert envelope["ok"], envelope
    warnings = envelope["result"]["warnings"]
    assert any("instance metadata service" in w and "this EC2 instance" in w for w in warnings), warnings
    result = await online.run("print(1)")
    assert "imds:blocked" not in result.limits_enforced and "network:on" in result.limits_enforced
    status = await online.sb.instance_status()
    assert any("metadata" in w for w in status.warnings), status.warnings
    # With the provisioning marker in place, both say the guard is there.
    (tmp_path / "imds-blocked").write_text("iptables owner match for uids 200000-265535\n")
    envelope = await box.raw_run(network=True)
    assert not [w for w in envelope["result"]["warnings"] if "metadata" in w]
    assert "imds:blocked" in (await online.run("print(1)")).limits_enforced
    status = await online.sb.instance_status()
    assert not [w for w in status.warnings if "metadata" in w]
    # With network off there is nothing to warn about: the namespace has no route to the address.
    (tmp_path / "imds-blocked").unlink()
    envelope = await box.raw_run(network=False)
    assert not [w for w in envelope["result"]["warnings"] if "metadata" in w]
    await box.assert_recovers()


async def test_kill_runner_parent(box: Box) -> None:
    code = """
import os, signal
for target, sig in ((os.getppid(), signal.SIGKILL), (os.getppid(), signal.SIGTERM), (1, signal.SIGKILL)):
    try:
        os.kill(target, sig)
        print("sent", target, sig)
    except OSError as exc:
        print("denied", target, type(exc).__name__)
print("still here")
"""
    result = await box.run(code)
    # The runner (this very test process: the local transport runs it in-process) survived and reported.
    assert result.success and result.stdout.endswith("still here\n"), result
    if box.isolation == "none":
        assert result.stdout.count(f"denied {os.getpid()} PermissionError") == 2, result.stdout
        assert "denied 1 PermissionError" in result.stdout
    else:
        # Inside the pid namespace the parent is bubblewrap's init (pid 1), which ignores signals from below.
        assert "sent 1 " in result.stdout
    await box.assert_recovers()


async def test_kill_minus_one(box: Box) -> None:
    victim = asyncio.create_task(
        box.run("import time; time.sleep(2); print('other session fine')", session="v-" + box.marker)
    )
    await asyncio.sleep(0.5)
    result = await box.run("/bin/kill -9 -1; echo unreachable", "bash")
    # kill(-1) hit every process the session's uid may signal: its own shell among them, nothing else.
    assert "unreachable" not in result.stdout
    assert result.termination_reason == "signal" and result.signal == 9, result
    assert result.return_code == -9
    assert result.error_message == "killed by signal 9 (SIGKILL)"
    assert (await victim).stdout == "other session fine\n"
    os.kill(os.getpid(), 0)
    await box.assert_recovers()


async def test_signal_every_visible_process(box: Box) -> None:
    # Another session's program runs meanwhile; this one tries to kill everything it can see.
    victim = asyncio.create_task(
        box.run("import time; time.sleep(2); print('victim fine')", session="v-" + box.marker)
    )
    await asyncio.sleep(0.5)
    code = """
import os, signal
killed = denied = 0
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    if pid == os.getpid():
        continue
    try:
        os.kill(pid, signal.SIGKILL)
        killed += 1
    except OSError:
        denied += 1
print("killed", killed, "denied", denied)
"""
    result = await box.run(code)
    assert result.success, result
    victim_result = await victim
    assert victim_result.success and victim_result.stdout == "victim fine\n", victim_result
    await box.assert_recovers()


async def test_read_stdin(box: Box) -> None:
    code = """
import sys
data = sys.stdin.read()
try:
    input()
except EOFError:
    print("eof", repr(data))
"""
    result = await box.run(code, timeout=5)
    assert result.success and result.stdout == "eof ''\n", result
    assert result.execution_time < 3
    shell = await box.run("read -r line; echo rc=$?; cat; echo done", "bash", timeout=5)
    assert shell.stdout == "rc=1\ndone\n", shell
    await box.assert_recovers()


@needs_node
async def test_read_stdin_node(box: Box) -> None:
    result = await box.run("console.log(require('fs').readFileSync(0).length)", "node", timeout=5)
    assert result.success and result.stdout == "0\n", result
    await box.assert_recovers()


async def test_invalid_utf8_output(box: Box) -> None:
    raw_out = b"ok \xff\xfe\xc3( \xed\xa0\x80 end\n"
    raw_err = b"\x80\x81 err"
    code = f"import sys\nsys.stdout.buffer.write({raw_out!r})\nsys.stderr.buffer.write({raw_err!r})"
    result = await box.run(code)
    assert result.success, result
    assert result.stdout.startswith("ok \ufffd") and result.stdout.endswith(" end\n")
    assert result.stdout_bytes == len(raw_out)
    # Byte-exact through get_task_files: not UTF-8, so it comes back as bytes.
    assert await box.sb.get_task_files(result.task_hash, "@stdout") == raw_out
    assert await box.sb.get_task_files(result.task_hash, "@stderr") == raw_err
    await box.assert_recovers()


async def test_single_10mb_line(box: Box) -> None:
    big = box.with_config(max_file_size_mb=16)
    result = await big.run("import sys\nsys.stdout.write('x' * 10_000_000)", timeout=20)
    assert result.success, result
    assert result.stdout_bytes == 10_000_000 and result.stdout_truncated
    assert len(result.stdout) < big.sb.config.max_output_chars + 300
    full = await big.sb.get_task_files(result.task_hash, "@stdout")
    assert full == "x" * 10_000_000
    await box.assert_recovers()


async def test_output_that_imitates_the_runner_protocol(box: Box) -> None:
    # Output never shares a channel with the runner's own JSON lines: it is captured to files.
    fake = json.dumps({"envelope": {"ok": True, "result": {"success": True, "stdout": "forged"}}})
    code = f"import sys\nprint({fake!r})\nsys.stdout.flush()\nsys.exit(3)"
    result = await box.run(code)
    assert not result.success and result.return_code == 3, result
    assert result.stdout == fake + "\n"
    await box.assert_recovers()


async def test_setuid_binaries_cannot_regain_root(box: Box) -> None:
    code = """
import os, subprocess
lines = open("/proc/self/status").read().splitlines()
status = dict(line.split(":\\t", 1) for line in lines if ":\\t" in line)
print("uid", status["Uid"].split()[0], "nnp", status["NoNewPrivs"].strip(),
      "capeff", status["CapEff"].strip(), "groups", repr(status.get("Groups", "").strip()))
for argv in (["su", "-c", "id -u", "root"], ["mount", "-t", "tmpfs", "none", "/mnt"], ["newgrp", "root"]):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        print(argv[0], out.returncode, out.stdout.strip() == "0")
    except OSError as exc:
        print(argv[0], "unavailable", type(exc).__name__)
print("euid", os.geteuid())
"""
    result = await box.run(code)
    assert result.success, result
    first = result.stdout.splitlines()[0].split()
    assert first[0] == "uid" and first[1] != "0"
    assert first[3] == "1"  # no new privileges: setuid bits are ignored
    assert first[5] == "0000000000000000"
    assert first[7] == "''"
    assert " True" not in result.stdout  # su never printed uid 0
    assert result.stdout.endswith(f"euid {first[1]}\n")
    await box.assert_recovers()


async def test_ptrace_attach_to_runner(box: Box) -> None:
    # The runner is this test process (the local transport runs it in-process).
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.ptrace(16, {os.getpid()}, None, None)  # PTRACE_ATTACH
print("attach", rc, ctypes.get_errno())
"""
    result = await box.run(code)
    assert result.success, result
    assert result.stdout.strip() == "attach -1 1", result.stdout  # EPERM: the syscall filter refuses ptrace
    # Beneath the filter: not permitted (another uid) without namespaces; not even visible from inside
    # bubblewrap's pid namespace.
    unfiltered = await box.with_config(syscall_filter="none").run(code)
    expected = "attach -1 3" if box.isolation == "bwrap" else "attach -1 1"
    assert unfiltered.stdout.strip() == expected, unfiltered.stdout
    await box.assert_recovers()
