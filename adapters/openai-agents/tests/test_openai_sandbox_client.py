"""EC2SandboxClient against the contract of ``agents.sandbox``: create, exec, files, limits, archives, resume,
delete - on the local transport, and the client's own operations over SSH."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents.sandbox import LocalSnapshotSpec, Manifest, User
from agents.sandbox.entries import File
from agents.sandbox.errors import (
    ConfigurationError,
    ExecTimeoutError,
    InvalidManifestPathError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
)
from agents.sandbox.session.sandbox_session import SandboxSession
from support.sshd import (
    Sshd,
    requires_sshd,
    running_sshd,
    ssh_config,  # the suite's SSH settings for its private sshd
)

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox_openai_agents import (
    EC2SandboxClient,
    EC2SandboxClientOptions,
    EC2SandboxSession,
    EC2SandboxSessionState,
)


@pytest.fixture
def client(sandbox: AsyncSandbox) -> EC2SandboxClient:
    return EC2SandboxClient(sandbox)


@pytest.fixture
async def session(client: EC2SandboxClient) -> AsyncIterator[SandboxSession]:
    created = await client.create()
    async with created:
        yield created
    await client.delete(created)


def text(data: bytes) -> str:
    return data.decode("utf-8")


async def read_text(session: SandboxSession, path: str) -> str:
    return text((await session.read(Path(path))).read())


def tar_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


# ---------------------------------------------------------------------- create and exec
async def test_workspace_root_is_the_session_work_dir(
    client: EC2SandboxClient, session: SandboxSession, base_dir: str
) -> None:
    inner = session._inner
    assert isinstance(inner, EC2SandboxSession)
    root = session.state.manifest.root
    assert root == os.path.join(base_dir, "sessions", inner.state.ec2_session_id)
    assert inner.state.ec2_session_id.startswith("oai-")
    pwd = await session.exec("pwd")
    assert (pwd.exit_code, text(pwd.stdout)) == (0, root + "\n")
    # Commands run as the session does: its uid, never root, in its sandbox.
    uid = await session.exec("id", "-u", shell=False)
    assert text(uid.stdout).strip() != "0"
    assert await session.running()


async def test_exec_passes_hostile_arguments_as_data(session: SandboxSession) -> None:
    hostile = ["a b", "$(touch pwned)", "'; rm -rf ~ #", '"\\', "`id`", "line\nbreak", "ünï €", "-n", ""]
    result = await session.exec("printf", "[%s]", *hostile, shell=False)
    assert result.exit_code == 0
    assert text(result.stdout) == "".join(f"[{arg}]" for arg in hostile)
    assert text((await session.exec("ls -A")).stdout) == ""  # nothing was touched
    # A shell command line is the shell's to read, as the SDK's shell tool expects.
    piped = await session.exec("echo out; echo err >&2; exit 7")
    assert (piped.exit_code, text(piped.stdout), text(piped.stderr)) == (7, "out\n", "err\n")
    nul = await session.exec("printf", "a\x00b", shell=False)
    assert nul.exit_code == 2 and b"NUL" in nul.stderr


async def test_state_kept_between_calls_and_environment_from_manifest(client: EC2SandboxClient) -> None:
    manifest = Manifest(environment={"value": {"GREETING": "hello from the manifest"}})
    session = await client.create(manifest=manifest)
    async with session:
        await session.exec("echo kept > /tmp/scratch && mkdir -p work && echo 1 > work/n")
        again = await session.exec("cat /tmp/scratch work/n; echo $GREETING")
        assert text(again.stdout) == "kept\n1\nhello from the manifest\n"
    await client.delete(session)


async def test_output_past_the_inline_cap_comes_back_whole(
    session: SandboxSession, config: SandboxConfig
) -> None:
    result = await session.exec("seq 1 20000; seq 1 3000 >&2")
    assert len(result.stdout) > config.max_output_chars
    assert text(result.stdout) == "".join(f"{n}\n" for n in range(1, 20001))
    assert text(result.stderr) == "".join(f"{n}\n" for n in range(1, 3001))


async def test_timeout_raises_the_sdk_timeout_error(session: SandboxSession) -> None:
    with pytest.raises(ExecTimeoutError) as caught:
        await session.exec("sleep 30", timeout=1.5)
    assert caught.value.context["killed_after_s"] == 1.5
    # The timeout killed the whole tree; the session goes on.
    assert (await session.exec("echo alive")).stdout == b"alive\n"


async def test_limits_are_the_environments(base_dir: str, sandbox: AsyncSandbox) -> None:
    tight = AsyncSandbox(
        SandboxConfig(base_sandbox_dir=base_dir, max_execution_time=5, max_file_size_mb=1),
        registry=sandbox.registry,
    )
    client = EC2SandboxClient(tight)
    session = await client.create()
    async with session:
        big = await session.exec("head -c 3000000 /dev/zero > big.bin")
        assert big.exit_code != 0
        assert b"[ec2-sandbox: the command was stopped" in big.stderr
        # An SDK timeout past the environment's max_execution_time is cut to it.
        with pytest.raises(ExecTimeoutError) as caught:
            await session.exec("sleep 60", timeout=600)
        assert caught.value.context["killed_after_s"] == 5
    await client.delete(session)
    await tight.aclose()


async def test_a_run_the_target_refuses_is_a_result(base_dir: str, sandbox: AsyncSandbox) -> None:
    full = AsyncSandbox(
        SandboxConfig(base_sandbox_dir=base_dir, disk_reserve_mb=16 << 20), registry=sandbox.registry
    )
    session = await EC2SandboxClient(full).create()
    result = await session.exec("echo never")
    assert (result.exit_code, result.stdout) == (126, b"")
    assert b"did not start" in result.stderr and b"reserve" in result.stderr
    await full.aclose()


async def test_acting_as_another_user_is_refused(session: SandboxSession) -> None:
    with pytest.raises(ConfigurationError, match="own uid"):
        await session.exec("id", user="root")
    with pytest.raises(ConfigurationError):
        await session.read(Path("x"), user=User(name="alice"))


async def test_manifests_it_cannot_honour_are_refused(client: EC2SandboxClient) -> None:
    with pytest.raises(ValueError, match="users and groups"):
        await client.create(manifest=Manifest(users=[User(name="alice")]))
    with pytest.raises(ValueError, match="work dir"):
        await client.create(manifest=Manifest(root="/srv/project"))
    with pytest.raises(ValueError, match="session id"):
        EC2SandboxClientOptions(session_id="../other")


# ---------------------------------------------------------------------- files
async def test_files_move_without_running_code(session: SandboxSession) -> None:
    blob = bytes(range(256)) * 1000
    await session.write(Path("data/deep/blob.bin"), io.BytesIO(blob))
    await session.write(Path(session.state.manifest.root) / "notes.txt", io.BytesIO(b"absolute path"))
    await session.write(Path("@stdout"), io.BytesIO(b"a file, not a stream"))
    assert (await session.read(Path("data/deep/blob.bin"))).read() == blob
    assert await read_text(session, "notes.txt") == "absolute path"
    assert await read_text(session, "@stdout") == "a file, not a stream"
    assert await session.read_bounded(Path("data/deep/blob.bin"), max_bytes=300) == blob[:300]
    listed = {Path(entry.path).name for entry in await session.ls(Path("."))}
    assert listed == {"data", "notes.txt", "@stdout"}


async def test_file_errors_are_the_sdks(session: SandboxSession) -> None:
    with pytest.raises(WorkspaceReadNotFoundError):
        await session.read(Path("missing.txt"))
    for escape in ("../other/x", "/etc/passwd", "a/../../x"):
        with pytest.raises(InvalidManifestPathError):
            await session.read(Path(escape))
        with pytest.raises(InvalidManifestPathError):
            await session.write(Path(escape), io.BytesIO(b"x"))
    with pytest.raises(WorkspaceArchiveReadError):
        await session.read(Path("."))


async def test_links_planted_by_a_command_are_not_followed(session: SandboxSession, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o644)
    await session.exec(f"ln -s {outside} link.txt && ln -s {tmp_path} linkdir")
    with pytest.raises(WorkspaceArchiveReadError):
        await session.read(Path("link.txt"))
    with pytest.raises(WorkspaceArchiveWriteError):
        await session.write(Path("linkdir/planted.txt"), io.BytesIO(b"x"))
    # Writing to a link replaces the link, never its target.
    await session.write(Path("link.txt"), io.BytesIO(b"overwritten"))
    assert await read_text(session, "link.txt") == "overwritten"
    assert outside.read_text() == "host secret"
    assert not (tmp_path / "planted.txt").exists()


async def test_manifest_entries_are_materialized(client: EC2SandboxClient) -> None:
    manifest = Manifest(entries={"inputs/readme.md": File(content=b"# given\n")})
    session = await client.create(manifest=manifest)
    async with session:
        assert await read_text(session, "inputs/readme.md") == "# given\n"
        assert text((await session.exec("cat inputs/readme.md")).stdout) == "# given\n"
    await client.delete(session)


# ---------------------------------------------------------------------- archives
async def test_persist_then_hydrate_into_another_session(
    client: EC2SandboxClient, session: SandboxSession
) -> None:
    await session.exec("mkdir -p src empty && echo 'print(1)' > src/main.py && ln -s src/main.py entry.py")
    await session.write(Path("bin.dat"), io.BytesIO(b"\x00\xff" * 100))
    archive = (await session.persist_workspace()).read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = {member.name.removeprefix("./") for member in tar.getmembers()}
    # Members are relative to the workspace, and the staged archive is not among them.
    assert {"src/main.py", "empty", "entry.py", "bin.dat"} <= names
    assert not any(name.startswith(".openai-agents-workspace-") for name in names)
    assert text((await session.exec("ls -A")).stdout).split() == ["bin.dat", "empty", "entry.py", "src"]

    other = await client.create()
    async with other:
        await other.hydrate_workspace(io.BytesIO(archive))
        assert await read_text(other, "src/main.py") == "print(1)\n"
        assert (await other.read(Path("bin.dat"))).read() == b"\x00\xff" * 100
        assert (
            text((await other.exec("readlink entry.py; test -d empty && echo dir")).stdout)
            == "src/main.py\ndir\n"
        )
        assert text((await other.exec("ls -A")).stdout).split() == ["bin.dat", "empty", "entry.py", "src"]
    await client.delete(other)


@pytest.mark.parametrize(
    "archive",
    [
        tar_of({"../escaped.txt": b"x"}),
        tar_of({"/abs.txt": b"x"}),
        tar_of({}, links={"up": "../../.."}),
        tar_of({}, links={"etc": "/etc"}),
    ],
    ids=["dotdot", "absolute", "link-up", "link-absolute"],
)
async def test_hydrate_refuses_unsafe_archives(
    session: SandboxSession, archive: bytes, base_dir: str
) -> None:
    with pytest.raises(WorkspaceArchiveWriteError):
        await session.hydrate_workspace(io.BytesIO(archive))
    assert text((await session.exec("ls -A")).stdout) == ""
    assert not os.path.exists(os.path.join(base_dir, "sessions", "escaped.txt"))


# ---------------------------------------------------------------------- resume and delete
async def test_resume_reattaches_to_the_live_session(client: EC2SandboxClient, sandbox: AsyncSandbox) -> None:
    session = await client.create(options=EC2SandboxClientOptions(session_id="oai-resume"))
    await session.start()
    await session.exec("echo in-tmp > /tmp/kept && echo in-dir > kept.txt")
    # The same ec2-sandbox session holds a live interpreter, as ec2_code_execution would leave it.
    await sandbox.session("oai-resume").run_code("answer = 42")
    payload = json.loads(json.dumps(client.serialize_session_state(session.state)))
    await session.aclose()  # what a process does before it exits: the files stay, no delete

    restarted = EC2SandboxClient(sandbox)  # as in another process
    state = restarted.deserialize_session_state(payload)
    assert isinstance(state, EC2SandboxSessionState) and state.ec2_session_id == "oai-resume"
    resumed = await restarted.resume(state)
    async with resumed:
        assert text((await resumed.exec("cat /tmp/kept kept.txt")).stdout) == "in-tmp\nin-dir\n"
        assert resumed.state.manifest.root == session.state.manifest.root
    assert (await sandbox.session("oai-resume").run_code("answer")).results[0].text == "42"
    await restarted.delete(resumed)
    assert not (await sandbox.list_files(session_id="oai-resume"))["exists"]


async def test_resume_of_a_deleted_session_restores_the_snapshot(
    client: EC2SandboxClient, tmp_path: Path
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    session = await client.create(snapshot=LocalSnapshotSpec(base_path=snapshots))
    await session.start()
    await session.exec("mkdir -p out && echo saved > out/result.txt && echo lost > /tmp/scratch")
    await session.stop()  # persists the workspace into the snapshot
    payload = client.serialize_session_state(session.state)
    await client.delete(session)

    resumed = await client.resume(client.deserialize_session_state(payload))
    async with resumed:
        assert await read_text(resumed, "out/result.txt") == "saved\n"
        assert (await resumed.exec("test -e /tmp/scratch")).exit_code == 1
    await client.delete(resumed)


async def test_delete_removes_the_session_from_the_target(
    client: EC2SandboxClient, sandbox: AsyncSandbox
) -> None:
    session = await client.create()
    await session.start()
    await session.write(Path("x.txt"), io.BytesIO(b"x"))
    inner = session._inner
    assert isinstance(inner, EC2SandboxSession)
    work_dir = session.state.manifest.root
    assert os.path.isdir(work_dir)
    await client.delete(session)
    assert not os.path.exists(work_dir)
    assert not await session.running()


def test_a_state_cannot_name_an_invalid_session(client: EC2SandboxClient) -> None:
    payload = {
        "type": "ec2_sandbox",
        "snapshot": {"type": "noop", "id": "x"},
        "manifest": {"root": "/tmp/x"},
        "ec2_session_id": "../../etc",
    }
    with pytest.raises(Exception, match="invalid"):
        client.deserialize_session_state(payload)


# ---------------------------------------------------------------------- over SSH
@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as server:
        yield server


@requires_sshd
async def test_over_ssh(sshd: Sshd, base_dir: str, tmp_path: Path) -> None:
    config = ssh_config(
        sshd, base_dir, str(tmp_path / "known_hosts"), max_output_chars=4000, max_execution_time=30
    )
    async with AsyncSandbox(config) as sandbox:
        client = EC2SandboxClient(sandbox)
        session = await client.create(manifest=Manifest(entries={"in.txt": File(content=b"over ssh\n")}))
        async with session:
            assert session.state.manifest.root == os.path.join(
                base_dir, "sessions", session._inner.state.ec2_session_id
            )  # type: ignore[attr-defined]
            result = await session.exec("cat in.txt; echo $((6 * 7)) > answer.txt; seq 1 5000")
            assert text(result.stdout).startswith("over ssh\n1\n") and text(result.stdout).endswith(
                "\n5000\n"
            )
            assert await read_text(session, "answer.txt") == "42\n"
            archive = (await session.persist_workspace()).read()
            await session.exec("rm -f in.txt answer.txt")
            await session.hydrate_workspace(io.BytesIO(archive))
            assert await read_text(session, "in.txt") == "over ssh\n"
            with pytest.raises(ExecTimeoutError):
                await session.exec("sleep 20", timeout=1)
        payload = client.serialize_session_state(session.state)
        resumed = await client.resume(client.deserialize_session_state(payload))
        async with resumed:
            assert await read_text(resumed, "answer.txt") == "42\n"
        await client.delete(resumed)
        assert not (await sandbox.list_files(session_id=resumed.state.ec2_session_id))["exists"]  # type: ignore[attr-defined]
