"""Warm per-run latency of the ``ssh`` transport against a private sshd on 127.0.0.1.

Compares, in the same run, alternating run by run in a rotating order and each as often:

* ``execute_code("print(1)")`` over an open connection (the runner service: the default);
* a raw ``env -i /usr/bin/python3 -c 'print(1)'`` on a new channel of the same open connection (the floor
  for any design that starts a program per run);
* the same command from a fresh ``ssh`` client process per run (what a tool shelling out to ``ssh`` pays);
* for reference, ``execute_code`` with one runner process per run (``persistent_runner=False``), and
  ``true`` on a channel: what the shell every channel command starts costs.

The baselines run through a neutral shell: sshd starts every channel command with the user's shell, which
reads the user's rc files, and a test host's ``~/.bashrc`` (``pyenv init``, say) can cost more than the run
itself. The benchmark's sshd therefore gives its sessions an empty ``HOME`` (sshd_config ``SetEnv``), and
the baselines call ``/usr/bin/python3`` under ``env -i`` (no pyenv shim, no inherited environment). That
applies to every side alike.

Targets: execute_code <= 1.5x the raw channel, and >= 5x faster than a fresh ssh process. Needs root and
openssh-server (``/usr/sbin/sshd``). Usage: ``uv run python benchmarks/bench_ssh.py [runs]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.sshd import running_sshd, ssh_config, sshd_available

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.transports.ssh import SSHTransport, create_ssh_transport

#: The baselines' program: no inherited environment, the system interpreter by its path.
RAW = "env -i /usr/bin/python3 -c 'print(1)'"


def ms(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1000:7.1f} ms "
        f"(min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"
    )


@contextlib.contextmanager
def neutral_sshd():  # type: ignore[no-untyped-def]
    """A private sshd whose sessions get an empty HOME: the user's shell finds no rc file to read."""
    with running_sshd() as server:
        home = server.dir / "home"
        home.mkdir()
        config = server.dir / "sshd_config"
        config.write_text(config.read_text() + f"SetEnv HOME={home}\n")
        server.stop()  # started with the plain config: start again with this one
        server.start()
        yield server


def bench_config(server) -> SandboxConfig:  # type: ignore[no-untyped-def]
    """The ssh transport to the private sshd, with a fresh base dir and known_hosts file."""
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    return ssh_config(server, base, os.path.join(base, "known_hosts"))


async def measure(server, runs: int) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    config = bench_config(server)
    known_hosts = config.ssh_known_hosts
    assert known_hosts is not None
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
        RAW,
    ]
    async with AsyncSandbox(config) as sb, AsyncSandbox(config, transport=per_process) as sb_proc:
        for _ in range(3):  # warm: connection, runner install, runner service, bwrap probe
            assert (await sb.execute_code("print(1)")).stdout == "1\n"
            assert (await sb_proc.execute_code("print(1)")).stdout == "1\n"
        transport = sb.transport
        assert isinstance(transport, SSHTransport) and transport._state is not None
        conn = transport._state.conn
        rc = await conn.run("echo $HOME", check=True)
        print(f"channel shell HOME: {str(rc.stdout).strip()} (empty dir: no rc files)")

        async def service() -> None:
            result = await sb.execute_code("print(1)")
            assert result.stdout == "1\n", result

        async def per_process_run() -> None:
            result = await sb_proc.execute_code("print(1)")
            assert result.stdout == "1\n", result

        async def raw() -> None:
            out = await conn.run(RAW, check=True)
            assert out.stdout == "1\n"

        async def shell() -> None:
            await conn.run("true", check=True)

        async def fresh() -> None:
            out = await asyncio.to_thread(subprocess.run, fresh_cmd, capture_output=True, check=True)
            assert out.stdout == b"1\n"

        sides = {
            "service": service,
            "raw": raw,
            "fresh": fresh,
            "per_process": per_process_run,
            "shell": shell,
        }
        await raw()
        await fresh()
        names = list(sides)
        for i in range(runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                t = time.perf_counter()
                await sides[name]()
                times[name].append(time.perf_counter() - t)
        result = await sb.execute_code("print(1)")
        print(f"isolation in force: {result.isolation}; connections opened: {transport.connections_opened}")
    return times


def main() -> int:
    reason = sshd_available()
    if reason:
        print(f"bench_ssh: cannot run: {reason}")
        return 1
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with neutral_sshd() as server:
        times = asyncio.run(measure(server, runs))
    service = statistics.median(times["service"])
    raw = statistics.median(times["raw"])
    fresh = statistics.median(times["fresh"])
    print(f"execute_code('print(1)'), open connection : {ms(times['service'])}")
    print(f"  (one runner process per run, reference) : {ms(times['per_process'])}")
    print(f"raw env -i python3, same connection       : {ms(times['raw'])}")
    print(f"fresh ssh client process per run          : {ms(times['fresh'])}")
    print(f"  (the shell alone: 'true' on a channel)   : {ms(times['shell'])}")
    print(f"  (alternating, {runs} runs each)")
    print(f"ratio execute_code / raw channel run : {service / raw:.2f}x (target <= 1.5x)")
    print(f"ratio fresh ssh process / execute_code: {fresh / service:.2f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
