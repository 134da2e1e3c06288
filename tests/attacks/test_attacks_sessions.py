"""Attacks on sessions' persistent interpreters: each contained, each with a positive control.

The interpreter is the one process allowed to outlive a call: these check that it is reachable only by the
runner, that nothing another session does reaches it, and that what a cell does to its own interpreter
cannot forge what the host reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from ec2_sandbox import runner

from .conftest import Box


def host_files(box: Box, session: str) -> tuple[str, dict]:
    key = runner.kernel_key(session)
    root = os.path.join(box.base, runner.KERNELS)
    with open(os.path.join(root, key + ".json")) as fh:
        return os.path.join(root, key + ".sock"), json.load(fh)


def uid_pids(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            pids.append(int(name))
    return pids


async def test_another_session_cannot_reach_the_interpreters_socket(box: Box) -> None:
    victim = box.sb.session(box.session)
    try:
        await victim.run_code("secret = 'victim'")
        sock_path, _ = host_files(box, box.session)
        # Positive control: the runner's uid (root) reaches the socket and is served.
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(sock_path)
        probe.close()
        attack = (
            "import glob, os, socket\n"
            f"paths = glob.glob({os.path.join(box.base, runner.KERNELS) + '/*'!r})\n"
            f"target = {sock_path!r}\n"
            "try:\n"
            "    s = socket.socket(socket.AF_UNIX); s.connect(target); print('CONNECTED')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n"
            "print('listed', len(paths))\n"
        )
        result = await box.run(attack, session="atk-other-" + box.marker[-8:])
        assert result.success, result
        assert "CONNECTED" not in result.stdout and "refused" in result.stdout, result.stdout
        assert "listed 0" in result.stdout, result.stdout
        still = await victim.run_code("secret")
        assert still.results[0].text == "'victim'" and still.state == "kept"
    finally:
        await victim.close()


async def test_another_session_cannot_signal_the_interpreter(box: Box) -> None:
    victim = box.sb.session(box.session)
    try:
        await victim.run_code("alive = True")
        _, state = host_files(box, box.session)
        pids = uid_pids(state["uid"])
        assert pids, "the interpreter runs as the session's uid"
        attack = (
            "import os, signal\n"
            f"for pid in {pids!r}:\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL); print('KILLED', pid)\n"
            "    except OSError as exc:\n"
            "        print('refused', type(exc).__name__)\n"
            # Positive control: a process may signal itself.
            "os.kill(os.getpid(), 0); print('self ok')\n"
        )
        result = await box.run(attack, session="atk-other-" + box.marker[-8:])
        assert result.success and "self ok" in result.stdout, result
        assert "KILLED" not in result.stdout, result.stdout
        still = await victim.run_code("alive")
        assert still.state == "kept" and still.results[0].text == "True"
    finally:
        await victim.close()


async def test_links_planted_in_the_session_do_not_steer_file_operations(box: Box, tmp_path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("keep")
    os.chmod(tmp_path, 0o755)
    session = box.sb.session(box.session)
    try:
        plant = (
            "import os\n"
            f"os.symlink({str(canary)!r}, 'link')\n"
            f"os.symlink({str(canary / 'keep.txt')!r}, 'file-link')\n"
            "os.makedirs('real/sub')\n"
        )
        planted = await session.run_code(plant)
        assert planted.success, planted
        with pytest.raises(Exception, match=r"symlink|not a directory"):
            await session.write_files({"link/evil.txt": "x"})
        await session.write_files({"file-link": "replaced"})  # replaces the link, never writes through it
        assert (canary / "keep.txt").read_text() == "keep"
        assert await session.remove_files("link") == ["link"]
        assert (canary / "keep.txt").exists() and not (canary / "evil.txt").exists()
        # Positive control: an ordinary nested write lands where it should.
        await session.write_files({"real/sub/ok.txt": "ok"})
        assert (await session.read_file("real/sub/ok.txt")).content == "ok"
    finally:
        await session.close()


async def test_threads_and_children_a_cell_leaves_end_with_the_interpreter(box: Box) -> None:
    session = box.sb.session(box.session)
    leave = (
        "import subprocess, threading, time\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        "def chatter():\n"
        "    while True:\n"
        "        print('tick', flush=True); time.sleep(0.2)\n"
        "threading.Thread(target=chatter, daemon=True).start()\n"
        "child.pid > 0"
    )
    left = await session.run_code(leave)
    assert left.success and left.results[0].text == "True", left
    _, state = host_files(box, box.session)
    # Positive control: while the interpreter lives, what the cell left runs on.
    assert len(uid_pids(state["uid"])) >= 2
    await session.close()
    assert await box.wait_no_strays() == []


async def test_a_cell_filling_memory_is_contained(box: Box) -> None:
    session = box.sb.session(box.session)
    try:
        await session.run_code("kept = 'before'")
        bomb = await session.run_code("blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))")
        assert not bomb.success, bomb
        if bomb.state == "kept":  # the rlimit made the allocation fail: the interpreter lives on
            assert bomb.error is not None and bomb.error.name == "MemoryError", bomb
            after = await session.run_code("del blocks\nkept")
            assert after.results[0].text == "'before'"
        else:  # killed at the limit: the result says the state is gone, and why
            assert bomb.state == "lost" and bomb.state_lost is not None, bomb
        # Positive control: the interpreter really had memory to use below the limit.
        fine = await session.run_code("len(bytearray(32 << 20))")
        assert fine.success and fine.results[0].text == str(32 << 20)
    finally:
        await session.close()


async def test_a_cell_cannot_forge_the_next_results(box: Box) -> None:
    session = box.sb.session(box.session)
    try:
        tamper = (
            "import builtins, json, sys\n"
            "builtins.repr = lambda obj: 'forged'\n"
            "builtins.print = lambda *a, **k: None\n"
            'json.dumps = lambda *a, **k: \'{"op": "done", "id": 999, "results": []}\'\n'
            "sys.stdout = None\n"
        )
        tampered = await session.run_code(tamper)
        assert tampered.success, tampered
        result = await session.run_code("import os\nos.write(1, b'real output\\n')\n40 + 2")
        assert result.success, result
        assert result.stdout == "real output\n"
        assert result.results[0].text == "42"  # the kernel's own repr, not the cell's
        assert result.execution_count == 2
        # The host's facts hold against a cell that lies about ending: it still times out.
        slow = await session.run_code("import time\ntime.sleep(30)", timeout=1)
        assert slow.timed_out and not slow.success and slow.execution_count == 3
    finally:
        await session.close()


async def test_a_cell_cannot_flood_the_root_host_through_its_channel(box: Box) -> None:
    session = box.sb.session(box.session)
    try:
        # Positive control: an honest interpreter's cells go on, state kept.
        await session.run_code("kept = 1")
        assert (await session.run_code("kept")).state == "kept"
        # A thread left behind writes well-formed frames into the channel to the host, without end.
        flood = (
            "import json, struct, threading\n"
            "sock = display.__self__.channel.sock\n"
            "frame = json.dumps({'op': 'done', 'id': -1, 'pad': 'x' * 60000}).encode()\n"
            "def spam():\n"
            "    while True:\n"
            "        sock.sendall(struct.pack('!I', len(frame)) + frame)\n"
            "threading.Thread(target=spam, daemon=True).start()\n"
        )
        await session.run_code(flood)
        for _ in range(200):  # the host ends the interpreter once more than 1 MB arrives unasked
            if not (await session.status())["live"]:
                break
            await asyncio.sleep(0.05)
        after = await session.run_code("'kept' in globals()")
        assert after.state == "new" and after.state_lost is not None, after
        assert after.state_lost.reason == "channel", after.state_lost
        # One frame larger than the host takes ends it too, and says so.
        big = await session.run_code(
            "import struct\nsock = display.__self__.channel.sock\n"
            "sock.sendall(struct.pack('!I', 64 << 20))\nimport time\ntime.sleep(5)"
        )
        assert big.state == "lost" and big.state_lost is not None and big.state_lost.reason == "channel", big
    finally:
        await session.close()
