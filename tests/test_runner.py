"""The runner as a program: its own syntax contract, protocol and refusals."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from ec2_sandbox import runner, zygote


@pytest.mark.parametrize("module", [runner, zygote], ids=["runner", "zygote"])
def test_runner_is_python38_syntax_and_stdlib_only(module: object) -> None:
    """The runner (and the zygote it starts where it is long-lived) may run on an old distro's python3."""
    source = Path(module.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported, siblings = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            siblings |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert siblings <= {"zygote"}, siblings  # optional: a runner shipped alone runs without it


def run_program(request: object) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", runner.__file__],
        input=json.dumps(request).encode() if not isinstance(request, bytes) else request,
        capture_output=True,
        timeout=60,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_garbage_request_gets_an_envelope_not_a_crash() -> None:
    code, lines = run_program(b"{not json")
    assert code == 0
    assert lines[-1]["envelope"]["ok"] is False
    assert lines[-1]["envelope"]["error"]["kind"] == "protocol"


def test_unknown_op_and_version_are_refused() -> None:
    _, lines = run_program({"v": 1, "op": "format-disk"})
    assert "unknown op" in lines[-1]["envelope"]["error"]["message"]
    _, lines = run_program({"v": 99, "op": "probe"})
    assert lines[-1]["envelope"]["error"]["kind"] == "protocol"


def test_remove_refuses_paths(tmp_base_dir: str) -> None:
    _, lines = run_program(
        {
            "v": 1,
            "op": "remove",
            "base_dir": tmp_base_dir,
            "entries": [{"kind": "session", "id": "../../etc"}],
        }
    )
    assert lines[-1]["envelope"]["error"]["kind"] == "invalid_input"


def test_envelope_fits_a_small_output_cap() -> None:
    big = {
        "text": "é\x01" * 20000,
        "head_chars": 20000,
        "bytes": 10**6,
        "truncated": True,
        "omitted_bytes": 1,
    }
    envelope = {"ok": True, "result": {"stdout": big, "stderr": dict(big)}}
    line = runner.fit_envelope(envelope, 24000)
    assert len(line) <= 24000
    result = json.loads(line)["envelope"]["result"]
    assert result["stdout"]["truncated"] and result["stdout"]["text"].startswith("é")


def test_a_stream_of_few_wide_characters_is_not_cut(tmp_path: Path) -> None:
    """More bytes than the limit but no more characters: whole, not a head and tail that overlap."""
    path = tmp_path / "stdout"
    path.write_text("é" * 8)
    assert runner.inline_text(str(path), 10) == {
        "text": "é" * 8,
        "bytes": 16,
        "truncated": False,
        "omitted_bytes": 0,
        "valid_utf8": True,
    }


@pytest.mark.parametrize("skew", [0, 1, 2, 3])
def test_a_cut_stream_starts_its_tail_at_a_character(tmp_path: Path, skew: int) -> None:
    path = tmp_path / "stdout"
    data = b"a" * skew + "😀".encode() * 5000
    path.write_bytes(data)
    cut = runner.inline_text(str(path), 100)
    head, tail = cut["text"][: cut["head_chars"]], cut["text"][cut["head_chars"] :]
    assert head == (data.decode()[:50]) and tail == "😀" * 50 and "\ufffd" not in cut["text"]
    assert cut["omitted_bytes"] == len(data) - len(cut["text"].encode())


def test_reserved_exit_statuses_are_never_used() -> None:
    assert runner.RESERVED_EXIT == {137: 3, 194: 3}


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_program_dies_when_the_runner_is_killed_outright(tmp_base_dir: str, isolation: str) -> None:
    """A cancelled SSM command or a lost SSH channel can SIGKILL the runner: its program must not live on."""
    import base64
    import os
    import time

    from ec2_sandbox.runtimes import BUILTIN_RUNTIMES

    code = b"import time\nwhile True:\n    open('beat.txt','a').write('x')\n    time.sleep(0.05)\n"
    request = {
        "v": 1,
        "op": "run",
        "base_dir": tmp_base_dir,
        "task_hash": "ab" * 16,
        "session_id": "orphan",
        "runtime": BUILTIN_RUNTIMES[0].to_runner(),
        "code_b64": base64.b64encode(code).decode(),
        "limits": {
            "memory_mb": 512,
            "file_size_mb": 10,
            "open_files": 256,
            "processes": 32,
            "cpu_seconds": 100,
        },
        "timeout": 60,
        "isolation": isolation,
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", runner.__file__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    beat = Path(tmp_base_dir, "sessions", "orphan", "beat.txt")
    deadline = time.monotonic() + 20
    while not (beat.exists() and beat.stat().st_size > 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert beat.exists(), "the program never started"
    proc.kill()
    proc.wait()
    time.sleep(0.3)
    size = os.path.getsize(beat)
    time.sleep(1.0)
    assert os.path.getsize(beat) == size, "the program outlived its runner"


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe is remembered only by a root runner")
def test_a_root_runner_remembers_the_bwrap_probe_across_processes(tmp_base_dir: str) -> None:
    """SSM starts a runner process per request: the sandbox probe must not be paid again each time."""
    # Kept in the base dir: another runner on this machine (another test run) never sees what is planted here.
    probe_file = Path(runner.bwrap_probe_file(tmp_base_dir))
    probe_file.unlink(missing_ok=True)
    request = {"v": 1, "op": "probe", "base_dir": tmp_base_dir, "runtimes": []}
    try:
        _, lines = run_program(request)
        usable = lines[-1]["envelope"]["result"]["bwrap_usable"]
        remembered = json.loads(probe_file.read_text())
        assert [value[0] for value in remembered.values()] == [usable]
        assert probe_file.stat().st_mode & 0o777 == 0o600
        # A later process takes the remembered answer as it is (here: a planted opposite one)...
        key = next(iter(remembered))
        probe_file.write_text(json.dumps({key: [not usable, False]}))
        _, lines = run_program(request)
        assert lines[-1]["envelope"]["result"]["bwrap_usable"] is (not usable)
        # ...but never a stale one.
        old = time.time() - runner.BWRAP_PROBE_TTL - 5
        os.utime(probe_file, (old, old))
        _, lines = run_program(request)
        assert lines[-1]["envelope"]["result"]["bwrap_usable"] is usable
    finally:
        probe_file.unlink(missing_ok=True)


def test_a_task_still_starting_is_not_found_yet(tmp_base_dir: str) -> None:
    # A run holds its record's meta.json (its use lock) before it has written it: a reader in that moment
    # is told to ask again, not handed a JSON error.
    base = runner.prepare_base(tmp_base_dir)
    task_hash = "ab" * 16
    os.mkdir(runner.record_dir(base, task_hash), 0o700)
    lock = runner.UseLock(runner.task_lock_path(base, task_hash))
    try:
        envelope = runner.handle({"v": 1, "op": "list", "base_dir": base, "task_hash": task_hash})
        assert envelope["ok"] is False and envelope["error"]["kind"] == "not_found", envelope
        assert "still starting" in envelope["error"]["message"]
    finally:
        lock.release()


def test_the_shipped_runner_is_python38_and_carries_its_companions() -> None:
    """What remote targets get: the runner without docstrings and comments, kernel.py inside it."""
    from ec2_sandbox import protocol

    shipped = protocol.runner_source()
    ast.parse(shipped, feature_version=(3, 8))
    module: dict[str, object] = {"__name__": "ec2_sandbox_runner"}
    exec(compile(shipped, "ec2_sandbox_runner.py", "exec"), module)
    companions = module["COMPANIONS"]
    assert isinstance(companions, dict) and set(companions) == {"kernel.py"}
    long_lived: dict[str, object] = {"__name__": "ec2_sandbox_runner"}
    exec(compile(protocol.runner_source(long_lived=True), "ec2_sandbox_runner.py", "exec"), long_lived)
    assert set(long_lived["COMPANIONS"]) == {"kernel.py", "zygote.py"}  # type: ignore[call-overload]
    companions = dict(companions, **long_lived["COMPANIONS"])  # type: ignore[arg-type]
    for source in companions.values():
        ast.parse(source, feature_version=(3, 8))
    assert module["PROTOCOL"] == runner.PROTOCOL
    # It fits one SSM command with room for a request (the first request to a new instance carries it).
    packed = len(base64.b64encode(zlib.compress(shipped, 6)))
    assert packed < 55_000, packed
