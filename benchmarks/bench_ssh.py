"""Warm per-run latency of the ``ssh`` transport against a private sshd on 127.0.0.1.

Compares, in the same run and interleaved (so machine load hits all alike):

* ``execute_code("print(1)")`` over an open connection (the runner service: the default);
* a raw ``python3 -c 'print(1)'`` on a new channel of the same open connection (the floor for any design
  that starts a program per run);
* a fresh ``ssh`` client process per run (what a tool shelling out to ``ssh`` pays);
* for reference, ``execute_code`` with one runner process per run (``persistent_runner=False``), and
  ``true`` on a channel: the cost of the login shell every channel command starts (rc files included).

Targets: execute_code ≤ 1.5x the raw channel, and ≥ 5x faster than a fresh ssh process. Needs root and
openssh-server (``/usr/sbin/sshd``). Usage: ``uv run python benchmarks/bench_ssh.py [runs]``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.sshd import running_sshd, sshd_available

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.transports.ssh import SSHTransport, create_ssh_transport


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms (min {min(values) * 1000:.1f}, n={len(values)})"


async def measure(server, runs: int) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    known_hosts = os.path.join(base, "known_hosts")
    config = SandboxConfig(
        transport="ssh",
        ssh_host="127.0.0.1",
        ssh_port=server.port,
        ssh_user="root",
        ssh_key_file=str(server.client_key_path),
        ssh_known_hosts=known_hosts,
        base_sandbox_dir=base,
    )
    per_process = create_ssh_transport(config)
    per_process.persistent_runner = False
    times: dict[str, list[float]] = {"service": [], "raw": [], "fresh": [], "per_process": [], "shell": []}
    fresh_cmd = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(server.client_key_path),
        "-p",
        str(server.port),
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "root@127.0.0.1",
        "python3 -c 'print(1)'",
    ]
    async with AsyncSandbox(config) as sb, AsyncSandbox(config, transport=per_process) as sb_proc:
        for _ in range(3):  # warm: connection, runner install, runner service, bwrap probe
            assert (await sb.execute_code("print(1)")).stdout == "1\n"
            assert (await sb_proc.execute_code("print(1)")).stdout == "1\n"
        transport = sb.transport
        assert isinstance(transport, SSHTransport) and transport._state is not None
        conn = transport._state.conn
        for i in range(runs):
            t = time.perf_counter()
            result = await sb.execute_code("print(1)")
            times["service"].append(time.perf_counter() - t)
            assert result.stdout == "1\n", result

            t = time.perf_counter()
            raw = await conn.run("python3 -c 'print(1)'", check=True)
            times["raw"].append(time.perf_counter() - t)
            assert raw.stdout == "1\n"

            t = time.perf_counter()
            await conn.run("true", check=True)
            times["shell"].append(time.perf_counter() - t)

            if i % 2 == 0:
                t = time.perf_counter()
                result = await sb_proc.execute_code("print(1)")
                times["per_process"].append(time.perf_counter() - t)
                assert result.stdout == "1\n"

            if i % 3 == 0:
                t = time.perf_counter()
                out = await asyncio.to_thread(subprocess.run, fresh_cmd, capture_output=True, check=True)
                times["fresh"].append(time.perf_counter() - t)
                assert out.stdout == b"1\n"
        print(f"isolation in force: {result.isolation}; connections opened: {transport.connections_opened}")
    return times


def main() -> int:
    reason = sshd_available()
    if reason:
        print(f"bench_ssh: cannot run: {reason}")
        return 1
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 45
    with running_sshd() as server:
        times = asyncio.run(measure(server, runs))
    service = statistics.median(times["service"])
    raw = statistics.median(times["raw"])
    fresh = statistics.median(times["fresh"])
    print(f"execute_code('print(1)'), open connection : {ms(times['service'])}")
    print(f"  (one runner process per run, reference) : {ms(times['per_process'])}")
    print(f"raw python3 -c 'print(1)', same connection: {ms(times['raw'])}")
    print(f"fresh ssh client process per run          : {ms(times['fresh'])}")
    print(f"  (login shell alone: 'true' on a channel) : {ms(times['shell'])}")
    print(f"ratio execute_code / raw channel run : {service / raw:.2f}x (target <= 1.5x)")
    print(f"ratio fresh ssh process / execute_code: {fresh / service:.2f}x (target >= 5x)")
    # Every channel command starts the user's login shell (with its rc files): a host with a costly
    # ~/.bashrc makes the raw baseline slow. Without that cost the raw run would take about:
    bare = max(raw - statistics.median(times["shell"]), 1e-3)
    print(
        f"  (raw run minus the login shell: {bare * 1000:.1f} ms; execute_code / that: {service / bare:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
