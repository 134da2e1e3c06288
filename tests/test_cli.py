"""The `ec2-sandbox` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import cli, start_cli

from ec2_sandbox.cli import EXIT_BROKEN_PIPE, EXIT_FAILED


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


async def test_cleanup_names_what_it_kept_because_a_run_holds_it(cli_env: dict[str, str]) -> None:
    # The run goes on until the test lets it end (a file in its work dir), however slow the cleanup is.
    code = (
        "import os, time\nprint('started', flush=True)\n"
        "while not os.path.exists('go'):\n    time.sleep(0.05)\nprint('finished')"
    )
    run = await start_cli(cli_env, "exec", "--session", "busy", "-c", code)
    assert run.stdout is not None
    assert await asyncio.wait_for(run.stdout.readline(), 60) == b"started\n"
    cleaned = cli(cli_env, "cleanup", "--hours", "0")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "kept     session busy: a run is in progress" in cleaned.stdout.decode(), cleaned.stdout
    base = cli_env["EC2_SANDBOX_BASE_SANDBOX_DIR"]
    with open(os.path.join(base, "sessions", "busy", "go"), "w"):
        pass
    assert await asyncio.wait_for(run.stdout.read(), 60) == b"finished\n"
    assert await run.wait() == 0


# ------------------------------------------------------------------------ the tool's own failures
def test_an_instance_without_a_region_is_one_line_for_every_command(cli_env: dict[str, str]) -> None:
    """No region anywhere: not a traceback and exit 1 (which `exec` could not tell from the program's)."""
    env = {
        **cli_env,
        "EC2_INSTANCE_ID": "i-0123456789abcdef0",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    task = "0" * 32
    for args in (["exec", "-c", "print(1)"], ["status"], ["files", task], ["cleanup"]):
        proc = cli(env, *args)
        assert proc.returncode == EXIT_FAILED, (args, proc.stderr)
        assert proc.stdout == b""
        [line] = proc.stderr.decode().splitlines()
        assert line.startswith("ec2-sandbox: no AWS region is configured: set 'region'"), (args, line)
    validate = cli(env, "config", "validate", "default")
    assert validate.returncode == 1
    assert "default.region: is needed to reach instance 'i-0123456789abcdef0'" in validate.stdout.decode()


def test_exit_statuses_are_in_the_help(cli_env: dict[str, str]) -> None:
    for args in ([], ["exec"], ["files"], ["status"]):
        text = cli(cli_env, *args, "--help").stdout.decode()
        assert "125  ec2-sandbox itself failed" in text and "141  the reader of stdout went away" in text
    assert "126  exec: a limit or signal killed the program" in cli(cli_env, "exec", "--help").stdout.decode()
    assert cli(cli_env, "exec", "--no-such-option").returncode == EXIT_FAILED


def test_a_reader_that_leaves_ends_every_command_quietly(cli_env: dict[str, str]) -> None:
    """`ec2-sandbox files --json HASH | head` and friends: no BrokenPipeError traceback."""
    task = json.loads(cli(cli_env, "exec", "--json", "-c", "print(1)").stdout)["task_hash"]
    for args in (["files", "--json", task], ["config", "show"], ["status", "--json"], ["plugins"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = cli(cli_env, *args, stdout=write_end, stderr=subprocess.PIPE)
        finally:
            os.close(write_end)
        assert (proc.returncode, proc.stderr) == (EXIT_BROKEN_PIPE, b""), args


# ------------------------------------------------------------------------ smaller things (item 9)
def test_global_options_after_the_command(cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"tight": {"max_execution_time": 5}}))
    proc = cli(cli_env, "exec", "-c", "print(1)", "--config", str(config), "-E", "tight", "--timeout", "10")
    assert proc.returncode == EXIT_FAILED
    assert b"max_execution_time (5), in seconds" in proc.stderr
    proc = cli(cli_env, "config", "show", "tight", "--json", "--config", str(config))
    assert json.loads(proc.stdout)["fields"]["max_execution_time"]["value"] == 5


def test_timeout_takes_what_people_type(cli_env: dict[str, str]) -> None:
    for given in ("1.5", "90s", "2m"):
        proc = cli(cli_env, "exec", "--timeout", given, "-c", "print('ok')")
        assert (proc.returncode, proc.stdout) == (0, b"ok\n"), (given, proc.stderr)
    short = cli(cli_env, "exec", "--timeout", "0.5", "-c", "print(1)")
    assert short.returncode == EXIT_FAILED
    assert b"timeout: 0.5 s must be between 1 and this environment's max_execution_time" in short.stderr
    typo = cli(cli_env, "exec", "--timeout", "soon", "-c", "print(1)")
    assert typo.returncode == EXIT_FAILED and b"'soon' is not a duration" in typo.stderr


def test_file_without_a_name_is_named_after_itself(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("payload\n")
    proc = cli(cli_env, "exec", "--file", str(tmp_path / "data.txt"), "-c", "print(open('data.txt').read())")
    assert (proc.returncode, proc.stdout) == (0, b"payload\n\n"), proc.stderr


def test_files_output_does_not_overwrite_without_force(cli_env: dict[str, str], tmp_path: Path) -> None:
    task = json.loads(cli(cli_env, "exec", "--json", "-c", "print('new')").stdout)["task_hash"]
    target = tmp_path / "out.txt"
    target.write_text("precious")
    refused = cli(cli_env, "files", task, "@stdout", "-o", str(target))
    assert refused.returncode == EXIT_FAILED and b"--force" in refused.stderr
    assert target.read_text() == "precious"
    assert cli(cli_env, "files", task, "@stdout", "-o", str(target), "--force").returncode == 0
    assert target.read_text() == "new\n"


def test_stdin_is_not_the_programs_and_help_says_so(cli_env: dict[str, str]) -> None:
    proc = cli(cli_env, "exec", "-c", "import sys; print(repr(sys.stdin.read()))", stdin=b"piped data")
    assert proc.stdout == b"''\n"
    assert "The program's stdin is empty" in cli(cli_env, "exec", "--help").stdout.decode()


def test_help_texts_match_what_the_commands_do(cli_env: dict[str, str]) -> None:
    assert "plain SSH" in " ".join(cli(cli_env, "--help").stdout.decode().split())
    shown = json.loads(cli(cli_env, "config", "show", "--json").stdout)
    assert set(shown) == {"environment", "fields"}
    assert set(shown["fields"]["max_memory_mb"]) == {"value", "source"}
    show_help = " ".join(cli(cli_env, "config", "show", "--help").stdout.decode().split())
    assert '{"environment": NAME, "fields": {FIELD: {"value": ..., "source": ...}}}' in show_help
