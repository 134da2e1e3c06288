"""The `ec2-sandbox` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ec2_sandbox.cli import EXIT_FAILED

EXE = [sys.executable, "-m", "ec2_sandbox.cli"]


@pytest.fixture
def cli_env(tmp_base_dir: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env["SANDBOX_BASE_DIR"] = tmp_base_dir
    env["EC2_SANDBOX_BASE_SANDBOX_DIR"] = tmp_base_dir
    return env


def cli(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*EXE, *args], env=env, input=stdin, capture_output=True, timeout=120)


def test_help_explains_every_command(cli_env: dict[str, str]) -> None:
    out = cli(cli_env, "--help").stdout.decode()
    for command in ("exec", "files", "cleanup", "status", "plugins"):
        assert command in out
    exec_help = cli(cli_env, "exec", "--help").stdout.decode()
    assert "124" in exec_help and "--file [NAME=]PATH" in exec_help


def test_exec_passes_streams_and_exit_status(cli_env: dict[str, str]) -> None:
    proc = cli(cli_env, "exec", "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)")
    assert proc.returncode == 7
    assert proc.stdout == b"out\n" and proc.stderr == b"err\n"


def test_exec_from_file_stdin_with_files_and_env(cli_env: dict[str, str], tmp_path: Path) -> None:
    prog = tmp_path / "prog.sh"
    prog.write_text('cat data/in.txt; printf "%s\\n" "$GREETING"\n')
    data = tmp_path / "in.txt"
    data.write_text("from a file\n")
    args = ["--runtime", "bash", "--file", f"data/in.txt={data}", "--env", "GREETING=$(whoami); `id`"]
    proc = cli(cli_env, "exec", *args, str(prog))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"from a file\n$(whoami); `id`\n"
    proc = cli(cli_env, "exec", "-r", "node", "-", stdin=b"console.log(6 * 7)")
    assert proc.stdout == b"42\n"


def test_exec_json_then_files(cli_env: dict[str, str]) -> None:
    proc = cli(cli_env, "exec", "--json", "-c", "open('r.bin','wb').write(bytes([0,255]))\nprint('x')")
    result = json.loads(proc.stdout)
    assert result["success"] and result["files_created"] == ["r.bin"]
    task = result["task_hash"]
    listing = cli(cli_env, "files", task).stdout.decode()
    assert "r.bin" in listing and "@stdout" in listing
    assert cli(cli_env, "files", task, "r.bin").stdout == bytes([0, 255])
    assert cli(cli_env, "files", task, "@stdout").stdout == b"x\n"
    missing = cli(cli_env, "files", task, "nope")
    assert missing.returncode == EXIT_FAILED and b"no file 'nope'" in missing.stderr


def test_exec_timeout_exit_status(cli_env: dict[str, str]) -> None:
    proc = cli(cli_env, "exec", "--timeout", "1", "-c", "import time; time.sleep(30)")
    assert proc.returncode == 124
    assert b"timed out" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exec", "-r", "cobol", "-c", "x"], b"runtime"),
        (["exec", "--env", "NOEQUALS", "-c", "x"], b"NAME=VALUE"),
        (["exec", "--env", "BAD NAME=x", "-c", "x"], b"env_vars"),
        (["exec", "--file", "../x=/etc/hostname", "-c", "x"], b"files"),
        (["files", "../../etc"], b"task_hash"),
    ],
)
def test_bad_input_exits_failed_with_a_message(
    cli_env: dict[str, str], args: list[str], message: bytes
) -> None:
    proc = cli(cli_env, *args)
    assert proc.returncode == EXIT_FAILED, proc
    assert message in proc.stderr


def test_status_cleanup_and_plugins(cli_env: dict[str, str]) -> None:
    status = cli(cli_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["healthy"] is True
    task = json.loads(cli(cli_env, "exec", "--json", "-c", "print(1)").stdout)["task_hash"]
    cleaned = json.loads(cli(cli_env, "cleanup", "--hours", "0", "--json").stdout)
    assert {"kind": "task", "id": task} in cleaned["removed"]
    plugins = cli(cli_env, "plugins").stdout.decode()
    assert "ec2_sandbox.builtins" in plugins and "runtime:python3" in plugins
