"""Attacks on resources and on the end of a run: bombs, spins, floods, daemons that try to outlive it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .conftest import Box, needs_node


async def test_fork_bomb(box: Box) -> None:
    code = """
import os, sys, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError:
    print("children", children, file=sys.stderr)
    raise
"""
    result = await box.run(code, timeout=10)
    # Without a pids cgroup no counter shows the limit was hit, only the program's own words: a hint.
    assert result.termination_reason == "exited" and result.return_code == 1, result
    assert "limit of 24 processes" in result.error_message and "a hint" in result.error_message
    forked = int(result.stderr.split("children", 1)[1].split()[0])
    assert 0 < forked < 24
    assert result.execution_time < 8
    await box.assert_recovers()


async def test_fork_bomb_shell(box: Box) -> None:
    # The classic: every process forks two more, in the background, forever.
    result = await box.run("bomb() { bomb | bomb & }; bomb; sleep 30", "bash", timeout=2)
    assert result.termination_reason == "timeout", result
    assert result.timed_out
    assert "Resource temporarily unavailable" in result.stderr  # the cap held: forks failed
    assert "limit of 24 processes" in result.error_message
    await box.assert_recovers()


async def test_thread_bomb(box: Box) -> None:
    code = """
import threading, time
threads = []
while True:
    t = threading.Thread(target=time.sleep, args=(60,), daemon=True)
    t.start()
    threads.append(t)
"""
    result = await box.run(code, timeout=10)
    assert result.termination_reason == "exited", result
    assert "limit of 24 processes" in result.error_message and "a hint" in result.error_message
    assert "can't start new thread" in result.stderr
    await box.assert_recovers()


async def test_memory_bomb_python(box: Box) -> None:
    result = await box.run("hog = []\nwhile True:\n    hog.append(bytearray(8 << 20))", timeout=10)
    box.assert_out_of_memory(result)
    assert "MemoryError" in result.stderr
    await box.assert_recovers()


async def test_memory_bomb_python_touching_pages(box: Box) -> None:
    # Pages written, not just reserved: the resident set is what would hurt the host.
    code = "hog = []\nwhile True:\n    hog.append(b'x' * (4 << 20))"
    result = await box.run(code, timeout=10)
    box.assert_out_of_memory(result)
    await box.assert_recovers()


@needs_node
async def test_memory_bomb_node(box: Box) -> None:
    result = await box.run("const hog = []; while (true) hog.push(new Array(1e6).fill(1.5));", "node")
    box.assert_out_of_memory(result)
    assert "heap out of memory" in result.stderr or "Reached heap limit" in result.stderr
    await box.assert_recovers()


@needs_node
async def test_memory_bomb_node_buffers(box: Box) -> None:
    # Buffers live outside the V8 heap: the heap flag cannot catch them, the data rlimit or cgroup does.
    result = await box.run("const hog = []; while (true) hog.push(Buffer.alloc(16 << 20, 1));", "node")
    if box.isolation == "bwrap" and result.return_code == -signal.SIGSEGV and not result.stderr:
        # Node sometimes dies of the failed allocation itself (seen on a loaded machine): SIGSEGV, nothing
        # said. The cap held; with a signal and no word of memory, the run is reported as killed by it.
        assert result.termination_reason == "signal" and not result.success, result
        assert 64 <= result.peak_memory_mb <= 128 + 32, result
    else:
        box.assert_out_of_memory(result)
        assert "Array buffer allocation failed" in result.stderr or "out of memory" in result.stderr
    await box.assert_recovers()


async def test_cpu_spin_past_timeout(box: Box) -> None:
    started = time.monotonic()
    result = await box.run("while True:\n    pass", timeout=1)
    assert result.termination_reason == "timeout", result
    assert result.timed_out and not result.success
    assert result.error_message == "timed out: the run was killed after its 1 s limit"
    assert 0.9 < result.execution_time < 3
    assert time.monotonic() - started < 5
    await box.assert_recovers()


async def test_child_ignoring_sigterm(box: Box) -> None:
    code = """
import os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.fork()  # parent and child both ignore SIGTERM and spin
while True:
    pass
"""
    result = await box.run(code, timeout=1)
    assert result.termination_reason == "timeout", result
    assert result.execution_time < 3  # SIGKILL followed the ignored SIGTERM after the grace period
    await box.assert_recovers()


async def test_child_ignoring_sigterm_left_behind(box: Box) -> None:
    # The program exits at once; its child ignores SIGTERM and would run on.
    code = """
import os, signal, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    os._exit(0)
print("parent done")
"""
    result = await box.run(code)
    assert result.success and result.stdout == "parent done\n", result
    await box.assert_recovers()


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        with open("daemon.pid", "w") as fh:
            fh.write(str(os.getpid()))
        while True:
            with open("daemon.log", "a") as fh:
                fh.write("alive\\n")
            time.sleep(0.05)
    os._exit(0)
while not os.path.exists("daemon.pid"):
    time.sleep(0.01)
print("daemon started")
"""


async def _assert_daemon_gone(box: Box, workdir: str) -> None:
    assert await box.wait_no_strays() == []
    log = os.path.join(workdir, "daemon.log")
    size = os.path.getsize(log)
    time.sleep(0.3)
    assert os.path.getsize(log) == size  # nothing writes to it any more


async def test_setsid_double_forked_daemon_outlives_run(box: Box) -> None:
    result = await box.run(DAEMON)
    assert result.success and result.stdout == "daemon started\n", result
    await _assert_daemon_gone(box, result.working_directory)
    await box.assert_recovers()


async def test_setsid_daemon_outlives_run_without_cgroup(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    # No cgroup to kill: without bubblewrap the runner sweeps the session's private uid instead.
    monkeypatch.setenv("EC2_SANDBOX_CGROUP", "off")
    result = await box.run(DAEMON)
    assert result.success, result
    expected = "kill:pid-namespace" if box.isolation == "bwrap" else "kill:uid"
    assert expected in result.limits_enforced
    await _assert_daemon_gone(box, result.working_directory)
    await box.assert_recovers()


async def test_shell_nohup_setsid_daemon(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EC2_SANDBOX_CGROUP", "off")
    code = f"nohup setsid sh -c 'while true; do sleep 1; done # {box.marker}' >/dev/null 2>&1 &\necho started"
    result = await box.run(code, "bash")
    assert result.success and result.stdout == "started\n", result
    await box.assert_recovers()


async def test_daemon_of_one_run_cannot_disturb_a_concurrent_run(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs of one session at once: the sweep after the first must not kill the second.
    monkeypatch.setenv("EC2_SANDBOX_CGROUP", "off")
    import asyncio

    slow = asyncio.create_task(box.run("import time; time.sleep(1.5); print('slow done')"))
    await asyncio.sleep(0.3)
    fast = await box.run(DAEMON)
    assert fast.success, fast
    slow_result = await slow
    assert slow_result.success and slow_result.stdout == "slow done\n", slow_result
    await _assert_daemon_gone(box, fast.working_directory)
    await box.assert_recovers()


FLOOD = {
    "lines": "import sys\nwhile True:\n    sys.{stream}.write('A' * 99 + '\\n')",
    "no_newlines": "import sys\nwhile True:\n    sys.{stream}.write('B' * 4096)",
}


async def _flood(box: Box, stream: str, kind: str) -> None:
    limit = 2 << 20
    result = await box.run(FLOOD[kind].format(stream=stream), timeout=20)
    assert result.termination_reason == "output_limit", result
    assert "2 MB output limit" in result.error_message
    assert getattr(result, f"{stream}_bytes") == limit
    inline = getattr(result, stream)
    assert getattr(result, f"{stream}_truncated")
    assert len(inline) <= 2000  # head and tail, the cut told by fields
    assert getattr(result, f"{stream}_omitted_bytes") == limit - len(inline.encode())
    full = await box.sb.get_task_files(result.task_hash, f"@{stream}")
    assert isinstance(full, str) and len(full) == limit
    unit = "A" * 99 + "\n" if kind == "lines" else "B" * 4096
    assert full == (unit * (limit // len(unit) + 1))[:limit]
    await box.assert_recovers()


async def test_stdout_flood_lines(box: Box) -> None:
    await _flood(box, "stdout", "lines")


async def test_stdout_flood_no_newlines(box: Box) -> None:
    await _flood(box, "stdout", "no_newlines")


async def test_stderr_flood_lines(box: Box) -> None:
    await _flood(box, "stderr", "lines")


async def test_stderr_flood_no_newlines(box: Box) -> None:
    await _flood(box, "stderr", "no_newlines")


async def test_stdout_flood_shell_yes(box: Box) -> None:
    result = await box.run("yes AAAA", "bash")
    assert result.termination_reason == "output_limit", result
    assert result.stdout_bytes == 2 << 20
    await box.assert_recovers()


async def test_file_grown_past_size_limit(box: Box) -> None:
    code = "with open('big.bin', 'wb') as fh:\n    while True:\n        fh.write(b'x' * (1 << 20))"
    result = await box.run(code)
    assert result.termination_reason == "file_size_limit", result
    assert result.error_message == "wrote a file past the 2 MB file-size limit"
    assert os.path.getsize(os.path.join(result.working_directory, "big.bin")) == 2 << 20
    await box.assert_recovers()


async def test_file_grown_past_size_limit_shell(box: Box) -> None:
    result = await box.run("head -c 100M /dev/zero > big.bin", "bash")
    assert result.termination_reason == "file_size_limit", result
    assert os.path.getsize(os.path.join(result.working_directory, "big.bin")) == 2 << 20
    await box.assert_recovers()


async def test_hundred_thousand_small_files(best_box: Box) -> None:
    # What the runner does with many files (snapshot, listing, cleanup) is the same with or without
    # bubblewrap, and making 100,000 files takes seconds: one isolation mode is enough.
    box = best_box
    code = """
import os
os.mkdir("many")
for i in range(100000):
    with open("many/%06d" % i, "w") as fh:
        fh.write("x")
print("made")
"""
    result = await box.run(code, timeout=30)
    assert result.success and result.stdout == "made\n", result
    # What comes back stays bounded, however many files the run made.
    assert len(result.files_created) == 10000
    listing = await box.sb.list_task_files(result.task_hash)
    assert listing["truncated"] and len(listing["files"]) <= 10000 + 1
    await box.assert_recovers()
    removed = await box.sb.cleanup_tasks(0)
    assert box.session in removed.removed_sessions
    assert not os.path.exists(result.working_directory)
