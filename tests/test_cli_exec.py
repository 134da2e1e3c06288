"""`ec2-sandbox exec` is an honest pipe: the program's bytes, all of them, on the stream they were written
to, as they are written; the tool's own words only on stderr. Real subprocesses throughout: locally, and over
SSM (the SSM stand-in), whose channel returns output capped and does not stream."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import DEADLINE, clean_env, cli, start_cli

from ec2_sandbox.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED
from ec2_sandbox.testing import ssm_standin

LONG = 'import sys\nprint("x" * 100000)\nprint("END")\nsys.stderr.write("e" * 60000)'
LONG_OUT, LONG_ERR = b"x" * 100000 + b"\nEND\n", b"e" * 60000
BINARY = (
    "import sys\n"
    "sys.stdout.buffer.write(bytes(range(256)))\n"
    "sys.stderr.buffer.write(bytes(range(255, -1, -1)))"
)
TASK_LINE = re.compile(rb"ec2-sandbox: task ([0-9a-f]{32}): 'ec2-sandbox files \1' lists its files\n")


@pytest.fixture(scope="module")
def ssm_server() -> Iterator[ssm_standin.Server]:
    with ssm_standin.serve() as server:
        yield server


#: Credentials that reach nothing but the stand-in, and no AWS file of the developer's.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def ssm_env(
    ssm_server: ssm_standin.Server, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The CLI set up for an instance of the SSM stand-in: fake credentials, its endpoint, no streaming."""
    region = "us-east-1"
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)  # for launching the instance from here
    return clean_env(
        tmp_base_dir,
        **FAKE_AWS,
        AWS_ENDPOINT_URL=ssm_server.url,
        EC2_SANDBOX_REGION=region,
        EC2_SANDBOX_INSTANCE_ID=ssm_standin.create_instance(ssm_server.url, region),
    )


@pytest.fixture(params=["local", "ssm"])
def any_env(request: pytest.FixtureRequest, cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env if request.param == "local" else request.getfixturevalue("ssm_env")


# ------------------------------------------------------------------------ 1, 2: every byte, exactly
def test_output_beyond_max_output_chars_passes_through_whole(any_env: dict[str, str]) -> None:
    proc = cli(any_env, "exec", "-c", LONG)
    assert (proc.returncode, len(proc.stdout), len(proc.stderr)) == (0, len(LONG_OUT), len(LONG_ERR))
    assert proc.stdout == LONG_OUT and proc.stderr == LONG_ERR


def test_binary_output_is_byte_exact(any_env: dict[str, str]) -> None:
    proc = cli(any_env, "exec", "-c", BINARY)
    assert proc.returncode == 0
    assert proc.stdout == bytes(range(256))
    assert proc.stderr == bytes(range(255, -1, -1))


# ------------------------------------------------------------------------ 3: live, in order, and Ctrl-C
async def read_line(stream: asyncio.StreamReader | None) -> bytes:
    assert stream is not None
    return await asyncio.wait_for(stream.readline(), DEADLINE)


async def test_output_is_live_and_in_the_order_written(cli_env: dict[str, str], tmp_base_dir: str) -> None:
    """Each line is written only after the previous one was seen by the reader of the CLI: the program waits
    for a gate file the test creates in the session's work dir."""
    code = (
        "import os, sys, time\n"
        "def wait(name):\n"
        "    while not os.path.exists(name):\n"
        "        time.sleep(0.01)\n"
        "print('out 1', flush=True)\n"
        "wait('gate1')\n"
        "print('err 1', file=sys.stderr, flush=True)\n"
        "wait('gate2')\n"
        "print('out 2', flush=True)\n"
    )
    proc = await start_cli(cli_env, "exec", "--session", "live", "-c", code)
    session = Path(tmp_base_dir, "sessions", "live")
    try:
        assert await read_line(proc.stdout) == b"out 1\n"
        (session / "gate1").touch()
        assert await read_line(proc.stderr) == b"err 1\n"
        (session / "gate2").touch()
        assert await read_line(proc.stdout) == b"out 2\n"
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        if proc.returncode is None:
            proc.kill()


async def test_ctrl_c_shows_what_was_written_and_names_the_task(cli_env: dict[str, str]) -> None:
    code = (
        "import sys, time\n"
        "sys.stdout.write('line\\npartial')\n"
        "sys.stdout.flush()\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = await start_cli(cli_env, "exec", "-c", code)
    try:
        assert await read_line(proc.stderr) == b"ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED
    assert out == b"line\npartial"
    match = re.fullmatch(
        rb"ec2-sandbox: interrupted, the run was stopped; task ([0-9a-f]{32}): "
        rb"'ec2-sandbox files \1' lists its files\n",
        err,
    )
    assert match, err
    assert cli(cli_env, "files", match[1].decode(), "@stdout").stdout == b"line\npartial"


# ------------------------------------------------------------------------ 4: the task hash, where it helps
def test_task_hash_with_verbose_and_not_in_a_pipe_without(cli_env: dict[str, str]) -> None:
    quiet = cli(cli_env, "exec", "-c", "print(1)")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"1\n", b"")
    told = cli(cli_env, "exec", "-v", "-c", "print(2)")
    assert told.stdout == b"2\n"
    match = TASK_LINE.fullmatch(told.stderr)
    assert match, told.stderr
    assert cli(cli_env, "files", match[1].decode(), "@stdout").stdout == b"2\n"


def test_task_hash_when_stderr_is_a_terminal(cli_env: dict[str, str]) -> None:
    leader, follower = pty.openpty()
    try:
        proc = cli(cli_env, "exec", "-c", "print(3)", stderr=follower, stdout=subprocess.PIPE)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0 and proc.stdout == b"3\n"
    assert TASK_LINE.fullmatch(seen.replace(b"\r\n", b"\n")), seen


# ------------------------------------------------------------------------ 6: a reader that goes away
def test_a_reader_that_leaves_stops_the_run_quietly(cli_env: dict[str, str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already had enough
    try:
        flood = "while True:\n    print('y' * 100)"
        proc = cli(cli_env, "exec", "-c", flood, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (EXIT_BROKEN_PIPE, b"")


def test_stateful_cells_keep_variables_between_commands(cli_env: dict[str, str]) -> None:
    session = ["--session", "cli-state", "--stateful"]
    assert cli(cli_env, "exec", *session, "-c", "total = 20").returncode == 0
    shown = cli(cli_env, "exec", *session, "-c", "print('adding')\ntotal * 2")
    assert (shown.returncode, shown.stdout) == (0, b"adding\n40\n"), shown
    failed = cli(cli_env, "exec", *session, "-c", "total / 0")
    assert failed.returncode == 1 and b"ZeroDivisionError" in failed.stderr, failed
    assert cli(cli_env, "exec", *session, "-c", "total").stdout == b"20\n"
    refused = cli(cli_env, "exec", "--stateful", "-c", "1")
    assert refused.returncode != 0 and b"needs a session_id" in refused.stderr
