"""EC2SandboxBackend beyond the standard suite: Deep Agents 0.7's contract where the suite asserts the old
one, hostile paths, limits, a target that cannot be reached, and a session that outlives its backend."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from deepagents.backends.protocol import FileDownloadResponse, FileUploadResponse

from ec2_sandbox import Sandbox, SandboxConfig
from ec2_sandbox_langchain import EC2SandboxBackend
from ec2_sandbox_langchain.deepagents import TRANSFER_DIR


@pytest.fixture
def config(tmp_base_dir: str) -> SandboxConfig:
    return SandboxConfig(
        base_sandbox_dir=tmp_base_dir, max_execution_time=20, max_output_chars=4000, max_file_size_mb=2
    )


@pytest.fixture
def backend(config: SandboxConfig) -> Iterator[EC2SandboxBackend]:
    made = EC2SandboxBackend(config, session_id="contract")
    yield made
    made.close()


def work_dir(backend: EC2SandboxBackend) -> str:
    """Where commands start, by the sandbox's own word; the backend's ``working_directory`` must agree."""
    seen = backend.execute("pwd").output.strip()
    assert backend.working_directory == seen
    return seen


# ---------------------------------------------------------------- the contract the suite asserts the old way
def test_write_replaces_an_existing_file(backend: EC2SandboxBackend) -> None:
    path = "/tmp/contract/existing.txt"
    assert backend.write(path, "First content").error is None
    assert backend.write(path, "Second content").error is None
    assert backend.execute(f"cat {path}").output == "Second content"


def test_glob_returns_absolute_paths_of_regular_files(backend: EC2SandboxBackend) -> None:
    root = "/tmp/contract/glob"
    backend.execute(f"mkdir -p {root}/dir1 {root}/sub && touch {root}/.hidden")
    for name in ("x.py", "y.txt", "file1.txt", "file10.txt", "sub/z.py"):
        assert backend.write(f"{root}/{name}", "content").error is None
    assert [m["path"] for m in backend.glob("*.py", path=root).matches or []] == [
        f"{root}/sub/z.py",
        f"{root}/x.py",
    ]
    everything = backend.glob("*", path=root).matches or []
    assert {m["path"] for m in everything} == {
        f"{root}/{name}" for name in ("x.py", "y.txt", "file1.txt", "file10.txt", "sub/z.py")
    }
    assert not any(m["is_dir"] for m in everything)
    assert [m["path"] for m in backend.glob("file?.txt", path=root).matches or []] == [f"{root}/file1.txt"]
    assert [m["path"] for m in backend.glob(".*", path=root).matches or []] == [f"{root}/.hidden"]


# ---------------------------------------------------------------- execute
def test_execute_merges_stderr_in_order_and_keeps_the_exit_code(backend: EC2SandboxBackend) -> None:
    result = backend.execute("echo one; echo two >&2; echo three; exit 3")
    assert (result.output, result.exit_code, result.truncated) == ("one\ntwo\nthree\n", 3, False)


def test_python_means_python3_where_the_target_has_no_python(backend: EC2SandboxBackend) -> None:
    result = backend.execute("python -c 'import sys; print(sys.version_info[0])'; bash -c 'python -V'")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3\nPython 3."), result.output


def test_a_command_past_its_timeout_is_killed_and_says_so(backend: EC2SandboxBackend) -> None:
    result = backend.execute("echo started; sleep 30", timeout=1)
    assert result.exit_code == 124
    assert result.output.startswith("started\n")
    assert "[ec2-sandbox: timed out" in result.output


def test_a_timeout_over_the_environments_limit_gets_the_limit(backend: EC2SandboxBackend) -> None:
    # max_execution_time is 20 s here: 3600 (Deep Agents' own maximum) and 0 ("none") run with 20.
    for timeout in (3600, 0):
        assert backend.execute("echo ok", timeout=timeout).output == "ok\n"


def test_output_past_max_output_bytes_is_cut_and_flagged(config: SandboxConfig) -> None:
    backend = EC2SandboxBackend(config, session_id="cut", max_output_bytes=100_000)
    try:
        whole = backend.execute("head -c 90000 /dev/zero | tr '\\0' x")
        assert (len(whole.output), whole.truncated) == (90_000, False)
        cut = backend.execute("head -c 300000 /dev/zero | tr '\\0' x")
        assert cut.truncated is True
        assert cut.output.startswith("x" * 100_000)
        assert "output cut at 100000 of 300000 bytes" in cut.output
    finally:
        backend.close()


def test_state_lives_in_the_session_across_backends(config: SandboxConfig) -> None:
    first = EC2SandboxBackend(config, session_id="kept")
    first.execute("echo remembered > note.txt && echo scratch > /tmp/scratch")
    first.close()
    again = EC2SandboxBackend(config, session_id="kept")
    try:
        assert again.id == "kept"
        assert again.execute("cat note.txt /tmp/scratch").output == "remembered\nscratch\n"
        assert again.execute("cat note.txt", timeout=5).exit_code == 0
    finally:
        again.close()
    other = EC2SandboxBackend(config, session_id="other")
    try:  # another session sees neither the work dir's files nor the /tmp
        assert other.execute("cat /tmp/scratch").exit_code == 1
    finally:
        other.close()


# ---------------------------------------------------------------- files: hostile paths get error codes
@pytest.mark.parametrize(
    "path",
    ["relative.txt", "/tmp/../etc/passwd", "/tmp/a/./b", "/tmp/dir/", "/tmp/nul\x00byte", "", "/"],
)
def test_paths_that_do_not_name_a_file_plainly_are_invalid(backend: EC2SandboxBackend, path: str) -> None:
    assert backend.upload_files([(path, b"x")]) == [FileUploadResponse(path=path, error="invalid_path")]
    assert backend.download_files([path]) == [FileDownloadResponse(path=path, error="invalid_path")]


def test_refusals_are_the_sandboxs_own(backend: EC2SandboxBackend) -> None:
    backend.execute("mkdir -p /tmp/h/adir && echo f > /tmp/h/afile && mkfifo /tmp/h/fifo")
    uploads = backend.upload_files(
        [
            ("/usr/planted", b"x"),  # the root is read-only inside the sandbox
            ("/tmp/h/adir", b"x"),  # a directory in the way
            ("/tmp/h/afile/below", b"x"),  # a file where a parent dir should be
            ("/tmp/h/ok.bin", b"\x00\xff"),
        ]
    )
    assert [u.error for u in uploads] == ["permission_denied", "is_directory", "invalid_path", None]
    downloads = backend.download_files(
        ["/tmp/h/adir", "/tmp/h/fifo", "/dev/zero", "/tmp/h/none", "/tmp/h/ok.bin"]
    )
    assert [d.error for d in downloads] == [
        "is_directory",
        "invalid_path",
        "invalid_path",
        "file_not_found",
        None,
    ]
    assert downloads[-1].content == b"\x00\xff"


def test_links_resolve_in_the_sandboxs_view_only(backend: EC2SandboxBackend, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"  # on this machine, outside anything the sandbox mounts
    secret.write_text("host only")
    os.chmod(tmp_path, 0o755)
    os.chmod(secret, 0o644)
    backend.execute(f"ln -s {secret} /tmp/to-host && ln -s /tmp/h2 /tmp/dirlink && mkdir -p /tmp/h2")
    assert backend.download_files([str(secret), "/tmp/to-host"]) == [
        FileDownloadResponse(path=str(secret), error="file_not_found"),
        FileDownloadResponse(path="/tmp/to-host", error="file_not_found"),
    ]
    # A link the sandbox can follow leads where a command of the agent would go: inside the sandbox.
    assert backend.upload_files([("/tmp/dirlink/in.txt", b"via link")])[0].error is None
    assert backend.execute("cat /tmp/h2/in.txt").output == "via link"
    assert secret.read_text() == "host only"


def test_a_file_over_the_file_size_limit_is_not_uploaded(backend: EC2SandboxBackend) -> None:
    big = b"x" * (2 * 1024 * 1024 + 1)
    responses = backend.upload_files([("/tmp/big.bin", big), ("/tmp/small.bin", b"ok")])
    assert responses[0].error is not None and responses[0].error.startswith("file_too_large")
    assert responses[1].error is None
    assert backend.execute("ls /tmp/big.bin").exit_code != 0


def test_transfers_leave_nothing_behind(backend: EC2SandboxBackend) -> None:
    root = work_dir(backend)
    backend.upload_files([(f"{root}/in/a.txt", b"a"), ("/tmp/b.txt", b"b")])
    assert [d.content for d in backend.download_files([f"{root}/in/a.txt", "/tmp/b.txt"])] == [b"a", b"b"]
    assert backend.download_files(["/tmp/missing"])[0].error == "file_not_found"
    assert backend.execute(f"ls -A {root}").output == "in\n"
    assert not any(TRANSFER_DIR in f["path"] for f in backend.sandbox.run(backend.session.list_files()))


def test_many_files_in_one_transfer_keep_their_order(backend: EC2SandboxBackend) -> None:
    files = [(f"/tmp/many/{i:03d}.bin", os.urandom(64) + bytes([i])) for i in range(120)]
    assert all(r.error is None for r in backend.upload_files(files))
    paths = [p for p, _ in files] + ["/tmp/many/missing"]
    got = backend.download_files(paths)
    assert [g.content for g in got[:-1]] == [c for _, c in files]
    assert got[-1].error == "file_not_found"


# ---------------------------------------------------------------- a target that cannot be reached
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_an_unreachable_target_is_an_error_response_never_an_exception(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("not a key")
    config = SandboxConfig(
        transport="ssh",
        ssh_host="127.0.0.1",
        ssh_port=closed_port(),
        ssh_user="root",
        ssh_key_file=str(key),
        ssh_known_hosts=str(tmp_path / "known_hosts"),
    )
    backend = EC2SandboxBackend(Sandbox(config), session_id="gone")
    for result in (backend.execute("echo hi"), await backend.aexecute("echo hi")):
        assert result.exit_code is None
        assert result.output.startswith("Error: the sandbox could not run the command")
    assert backend.upload_files([("/tmp/a", b"a")])[0].error.startswith("error: ")  # type: ignore[union-attr]
    assert (await backend.adownload_files(["/tmp/a"]))[0].error.startswith("error: ")  # type: ignore[union-attr]
    assert backend.read("/tmp/a").error is not None
    assert backend.ls("/tmp").entries in (None, [])


def test_importing_without_deepagents_names_the_extra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['deepagents'] = None\n"
        "import ec2_sandbox_langchain\n"
        "ec2_sandbox_langchain.create_langchain_tools\n"
        "try:\n    ec2_sandbox_langchain.EC2SandboxBackend\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'ec2-sandbox-langchain[deepagents]'" in out
