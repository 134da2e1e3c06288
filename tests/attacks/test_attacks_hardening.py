"""Attacks by code that has read the runner: each broke a promise once, and each is a test now.

The cleanup attacks race the root runner's removal of a tree the sandbox can write; the result attacks try
to make the runner report a reason the program did not earn. Every one has a positive control: the attack
really did what it set out to do (it swapped, it wrote, it printed), and the runner still held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import uuid
from collections.abc import Iterator

import pytest

from ec2_sandbox import AsyncSandbox, protocol, runner
from ec2_sandbox.transports.local import LocalTransport

from .conftest import Box


async def wait_for_file(path: str, seconds: float = 20.0) -> None:
    """Until the run under attack says it is ready (a file it writes): readiness, not a fixed sleep."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not os.path.exists(path):
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


def make_canary(root: str, files: int = 100) -> str:
    canary = os.path.join(root, "host-dir-" + uuid.uuid4().hex[:8])
    os.mkdir(canary, 0o755)
    for i in range(files):
        with open(os.path.join(canary, f"keep{i}"), "w") as fh:
            fh.write("host file")
    return canary


def assert_canary_intact(canary: str, files: int = 100) -> None:
    assert sorted(os.listdir(canary)) == sorted(f"keep{i}" for i in range(files))
    assert stat.S_IMODE(os.stat(canary).st_mode) == 0o755


# ------------------------------------------------------------------------------------------- cleanup

SWAPPER = """
import os, sys, time
canary = sys.argv[1] if len(sys.argv) > 1 else os.environ["CANARY"]
os.utime(".", (0, 0))
os.mkdir("a")
for i in range(100):
    open("a/keep%d" % i, "w").close()
os.mkdir("pad")
for i in range(3000):
    open("pad/%05d" % i, "w").close()
open("ready", "w").close()
start = os.stat("a").st_mtime_ns
deadline = time.time() + float(os.environ["SECONDS_LEFT"])
planted = False
while time.time() < deadline:
    try:
        if os.stat("a", follow_symlinks=False).st_mtime_ns != start and not planted:
            os.rename("a", "a.old")
            os.symlink(canary, "a")
            planted = True
            print("planted", flush=True)
    except OSError:
        pass
    time.sleep(0.001)
print("done", flush=True)
"""


async def test_cleanup_skips_a_session_with_a_run_in_flight(box: Box, tmp_path) -> None:
    # The attack of the hardening issue: forge the session's age, then swap a dir being emptied for a link
    # to a host dir. Cleanup now never starts on a session whose run is in flight.
    canary = make_canary(str(tmp_path))
    workdir = os.path.join(box.base, "sessions", box.session)
    run = asyncio.create_task(box.run(SWAPPER, env={"CANARY": canary, "SECONDS_LEFT": "4"}, timeout=20))
    await wait_for_file(os.path.join(workdir, "ready"))
    during = await box.sb.cleanup_tasks(0)
    assert box.session not in during.removed_sessions
    assert [e.reason for e in during.skipped if e.id == box.session] == ["a run is in progress"]
    result = await run
    assert result.success and result.stdout == "done\n", result  # nothing was ever removed under it
    assert_canary_intact(canary)
    # The session's own clock is the runner's: its forged mtime of 1970 did not make it old.
    fresh = await box.sb.cleanup_tasks(1)
    assert box.session not in fresh.removed_sessions
    after = await box.sb.cleanup_tasks(0)
    assert box.session in after.removed_sessions
    assert not os.path.lexists(workdir)
    assert_canary_intact(canary)


def test_removal_through_dir_fds_never_follows_a_planted_link(tmp_path) -> None:
    # The same race against the removal itself, with the swapper as fast as a thread can be: whatever it
    # plants, the link is removed as a link and the host dir's files and mode stay.
    canary = make_canary(str(tmp_path))
    tree = tmp_path / "tree"
    for sub in ("a", "b"):
        (tree / sub).mkdir(parents=True)
        for i in range(2000):
            (tree / sub / f"f{i}").write_text("x")
    swaps = 0
    stop = threading.Event()

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            for sub in ("a", "b"):
                try:
                    os.rename(tree / sub, tree / f"{sub}.old")
                    os.symlink(canary, tree / sub)
                    swaps += 1
                except OSError:
                    pass

    thread = threading.Thread(target=swapper)
    thread.start()
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            if runner.remove_at(parent, "tree") and not os.path.lexists(tree):
                break
    finally:
        stop.set()
        thread.join()
        os.close(parent)
    assert swaps > 0  # positive control: links were planted while the tree was being removed
    assert_canary_intact(canary)


def test_removal_changes_no_mode_outside_what_it_removes(tmp_path) -> None:
    # Files appearing while a dir is emptied made the old removal chmod its parent (the sessions dir) and
    # so break every later session. Now a dir that will not empty is reported, and nothing else changes.
    parent_dir = tmp_path / "sessions"
    parent_dir.mkdir(mode=0o711)
    os.chmod(parent_dir, 0o711)
    work = parent_dir / "s1"
    work.mkdir()
    stop = threading.Event()
    made = 0

    def writer() -> None:
        nonlocal made
        while not stop.is_set():
            try:
                work.mkdir(exist_ok=True)
                (work / f"n{made}").write_text("x")
                made += 1
            except OSError:
                pass

    thread = threading.Thread(target=writer)
    thread.start()
    while made < 200:
        threading.Event().wait(0.001)
    fd = os.open(parent_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(5):
            gone = runner.remove_at(fd, "s1")
    finally:
        stop.set()
        thread.join()
        os.close(fd)
    assert made > 0
    assert gone in (True, False)
    assert stat.S_IMODE(os.stat(parent_dir).st_mode) == 0o711


async def test_cleanup_during_a_run_keeps_the_run_and_its_record(box: Box) -> None:
    workdir = os.path.join(box.base, "sessions", box.session)
    code = (
        "print('before', flush=True)\nopen('ready','w').close()\nimport time; time.sleep(1.5)\nprint('after')"
    )
    run = asyncio.create_task(box.run(code))
    await wait_for_file(os.path.join(workdir, "ready"))
    cleaned = await box.sb.cleanup_tasks(0)
    in_use = {(e.kind, e.id) for e in cleaned.skipped}
    assert ("session", box.session) in in_use, cleaned
    result = await run
    assert result.success and result.stdout == "before\nafter\n", result
    assert ("task", result.task_hash) in in_use or ("run", result.task_hash) in in_use, cleaned
    assert await box.sb.get_task_files(result.task_hash, "@stdout") == "before\nafter\n"
    await box.assert_recovers()


@contextlib.contextmanager
def process_as(uid: int) -> Iterator[None]:
    """A process running as ``uid`` for as long as the block runs (as a run left behind would be)."""
    read_end, write_end = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        try:
            runner.drop_privileges(uid)
            os.write(ready_w, b"1")
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"  # it runs as the uid now
    os.close(ready_r)
    try:
        yield
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


async def test_cleanup_skips_what_a_live_process_of_its_uid_holds(box: Box) -> None:
    # No run in flight, but a process of the session's uid alive (started here as that uid, as a run left
    # behind by an older runner would be): the session is kept.
    assert (await box.run("print('made')")).success
    uid = runner.UidPool(box.base, *runner.SANDBOX_UID_RANGE).lookup("session:" + box.session)
    assert uid is not None
    with process_as(uid):
        kept = await box.sb.cleanup_tasks(0)
        assert any(e.id == box.session and "still running" in e.reason for e in kept.skipped), kept
    gone = await box.sb.cleanup_tasks(0)
    assert box.session in gone.removed_sessions


async def test_cleanup_keeps_a_task_and_its_run_record_while_a_process_of_its_uid_lives(box: Box) -> None:
    # A session-less task's uid is found through its run record: were the record removed first, the task
    # could no longer be found to have a live process. Both are kept while one lives; the control: both
    # go once it has ended.
    result = await box.run("print('made')", session=False)
    assert result.success, result
    uid = runner.UidPool(box.base, *runner.SANDBOX_UID_RANGE).lookup("task:" + result.task_hash)
    assert uid is not None
    with process_as(uid):
        kept = await box.sb.cleanup_tasks(0)
        held = {e.kind for e in kept.skipped if e.id == result.task_hash and "still running" in e.reason}
        assert held == {"task", "run"}, kept
    gone = await box.sb.cleanup_tasks(0)
    assert result.task_hash in gone.removed_tasks, gone


# ----------------------------------------------------------------------------------------- listings

EXCHANGER = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("d")
open("d/mine.txt", "w").close()
os.symlink(os.environ["OTHER"], "l")
open("ready", "w").close()
swaps = 0
deadline = time.time() + 3
while time.time() < deadline:
    if libc.renameat2(-100, b"d", -100, b"l", 2) == 0:  # RENAME_EXCHANGE
        swaps += 1
print("swaps", swaps)
"""


async def test_listing_never_follows_an_exchanged_link(box: Box) -> None:
    other = box.with_config()
    other.session = "victim-" + uuid.uuid4().hex[:8]
    planted = await other.run("open('secret-name-of-another-session.txt','w').write('x')")
    assert planted.success
    other_dir = os.path.join(box.base, "sessions", other.session)
    workdir = os.path.join(box.base, "sessions", box.session)
    swapper = asyncio.create_task(box.run(EXCHANGER, env={"OTHER": other_dir}, timeout=20))
    await wait_for_file(os.path.join(workdir, "ready"))
    seen: list[str] = []
    while not swapper.done():
        listed = await box.run("print('lister')")
        seen += listed.files_created
        seen += [f["path"] for f in (await box.sb.list_task_files(listed.task_hash))["files"]]
    result = await swapper
    assert int(result.stdout.split()[1]) > 100, result  # positive control: it swapped all along
    assert not [name for name in seen if "secret-name" in name]


# ---------------------------------------------------------------------------------------- resources


async def test_shared_memory_does_not_escape_the_memory_cap(box: Box) -> None:
    touch = (
        "import mmap\nm = mmap.mmap(-1, 512 << 20)\n"
        "for i in range(0, 512 << 20, 4096):\n    m[i] = 1\nprint('mapped 512 MB')"
    )
    result = await box.run(touch)
    assert not result.success and "mapped" not in result.stdout, result
    assert "PermissionError" in result.stderr
    memfd = await box.run("import os\nos.memfd_create('x')\nprint('memfd')")
    assert not memfd.success and "memfd" not in memfd.stdout, memfd
    # Positive control: without the syscall filter a shared mapping is not counted by RLIMIT_DATA.
    unfiltered = box.with_config(syscall_filter="none")
    assert (await unfiltered.run(touch)).stdout == "mapped 512 MB\n"
    await box.assert_recovers()


async def test_tmpfs_mounts_share_the_memory_limit(best_box: Box) -> None:
    box = best_box
    # Under bubblewrap /tmp and /dev/shm are private memory no rlimit counts: together at most the limit.
    code = """
import os
total = 0
for where in ("/tmp", "/dev/shm"):
    try:
        with open(where + "/fill", "wb") as fh:
            for _ in range(512):
                fh.write(b"x" * (1 << 20))
                fh.flush()
    except OSError:
        pass
    total += os.path.getsize(where + "/fill")
print(total >> 20)
"""
    result = await box.with_config(max_file_size_mb=1024).run(code, session=False)
    assert result.success, result
    assert 100 <= int(result.stdout) <= 128, result  # positive control: it did write, up to the cap
    await box.assert_recovers()


async def test_a_sessions_tmp_counts_toward_its_disk_quota(best_box: Box) -> None:
    # A session's /tmp lives on between its runs, on disk: the disk quota counts it with the work dir.
    box = best_box.with_config(max_file_size_mb=1024, max_disk_mb=64)
    fill = (
        "import os, time\n"
        "with open('/tmp/fill', 'wb') as fh:\n"
        "    for _ in range(256):\n"
        "        fh.write(b'x' * (1 << 20)); fh.flush(); os.fsync(fh.fileno()); time.sleep(0.01)\n"
        "print('wrote it all')\n"
    )
    result = await box.run(fill, timeout=30)
    assert not result.success and result.termination_reason == "disk_limit", result
    assert "wrote it all" not in result.stdout
    # Positive control: below the quota the same /tmp holds, and is there for the session's next run.
    await box.run("import os\nos.remove('/tmp/fill')")
    kept = await box.run("open('/tmp/small', 'w').write('x' * 1000)")
    assert kept.success, kept
    again = await box.run("print(len(open('/tmp/small').read()))")
    assert again.stdout == "1000\n", again
    await box.assert_recovers()


# ------------------------------------------------------------------------------------------ results


@pytest.fixture(params=["inprocess", "subprocess"])
def transport_mode(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_exit_statuses_do_not_forge_a_reason(box: Box, transport_mode: str) -> None:
    sandbox = AsyncSandbox(box.sb.config, transport=LocalTransport(mode=transport_mode))
    try:
        for status in (152, 153, 137, 143):
            result = await sandbox.execute_code(f"exit {status}", "bash", session_id=box.session)
            assert result.termination_reason == "exited", result
            assert result.return_code == status and result.signal is None, result
        # Positive control: a real CPU-time limit is still named as such.
        spin = await box.raw_run(
            runtime=box.sb.runtime("bash").to_runner(),
            code_b64=protocol.b64(b"while :; do :; done"),
            limits=dict(box.limits, cpu_seconds=1),
            timeout=10,
            warm=True,  # a cold start in this (non-subreaper) process could not count the CPU it used
        )
        assert spin["ok"] and spin["result"]["termination_reason"] == "cpu_time_limit", spin
    finally:
        await sandbox.aclose()


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("MemoryError", "ran out of memory"),
        ("Resource temporarily unavailable", "limit of 24 processes"),
        ("File too large", "file-size limit"),
    ],
)
async def test_stderr_text_does_not_forge_a_reason(box: Box, text: str, limit: str) -> None:
    result = await box.run(f"import sys\nprint({text!r}, file=sys.stderr)\nsys.exit(1)")
    assert result.termination_reason == "exited" and result.return_code == 1, result
    # Named only as a hint, and as one.
    assert limit in result.error_message and "a hint" in result.error_message, result
    await box.assert_recovers()


async def test_env_values_never_travel_in_argv(box: Box, transport_mode: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    sandbox = AsyncSandbox(
        box.sb.config.model_copy(update={"warm_start": False}), transport=LocalTransport(mode=transport_mode)
    )
    workdir = os.path.join(box.base, "sessions", box.session)
    code = (
        "import os, time\nprint(os.environ['API_KEY'] == " + repr(secret) + ")\n"
        "open('ready','w').close()\ntime.sleep(1)"
    )
    try:
        run = asyncio.create_task(
            sandbox.execute_code(code, session_id=box.session, env_vars={"API_KEY": secret})
        )
        await wait_for_file(os.path.join(workdir, "ready"))
        in_argv, in_environ = [], []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for what, found in (("cmdline", in_argv), ("environ", in_environ)):
                try:
                    with open(f"/proc/{pid}/{what}", "rb") as fh:
                        if secret.encode() in fh.read():
                            found.append(pid)
                except OSError:
                    pass
        result = await run
    finally:
        await sandbox.aclose()
    assert result.stdout == "True\n", result
    assert in_environ  # positive control: the scan sees the running program and its value
    assert in_argv == []  # /proc/PID/cmdline is readable by every user of the machine


async def test_a_file_named_like_a_stream_is_still_the_file(box: Box) -> None:
    result = await box.run("open('@stdout','w').write('FILE')\nprint('STREAM')")
    assert result.success
    assert "./@stdout" in result.files_created
    assert await box.sb.get_task_files(result.task_hash) == {"./@stdout": "FILE"}
    assert await box.sb.get_task_files(result.task_hash, "./@stdout") == "FILE"
    assert await box.sb.get_task_files(result.task_hash, "@stdout") == "STREAM\n"
    await box.assert_recovers()


def test_imds_guard_is_claimed_only_for_the_uids_it_covers(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imds-blocked"
    marker.write_text("")
    monkeypatch.setattr(runner, "IMDS_MARKER", str(marker))
    first, count = runner.SANDBOX_UID_RANGE
    assert runner.imds_guard_covers(first) and runner.imds_guard_covers(first + count - 1)
    # A runner without root runs code as its own uid (ssh/eic without ssh_sudo): not a guarded uid.
    assert not runner.imds_guard_covers(None)
    assert not runner.imds_guard_covers(1000)
    warning = runner.imds_warning(True, runner.imds_guard_covers(None))
    if runner.on_ec2() is not False:
        assert warning and "outside the sandbox uids" in warning
    marker.unlink()
    assert not runner.imds_guard_covers(first)  # positive control: no marker, no claim


async def test_imds_blocked_is_reported_only_when_it_protects_the_run(
    box: Box, tmp_path, monkeypatch
) -> None:
    marker = tmp_path / "imds-blocked"
    marker.write_text("")
    monkeypatch.setattr(runner, "IMDS_MARKER", str(marker))
    guarded = await box.with_config(network=True).run("print(1)")
    assert "imds:blocked" in guarded.limits_enforced  # root runner: the code runs as a sandbox uid
    offline = await box.run("print(1)")
    assert "imds:blocked" not in offline.limits_enforced  # network off: nothing to claim


# --------------------------------------------------------------------------------------------------- disk

FILL = """
import os
os.makedirs("fill", exist_ok=True)
n = 0
while True:
    with open("fill/%05d" % n, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
    n += 1
"""


async def test_a_work_dir_cannot_grow_past_its_disk_quota(box: Box) -> None:
    capped = box.with_config(max_disk_mb=20)
    result = await capped.run(FILL, timeout=30)
    assert result.termination_reason == "disk_limit", result
    assert "20 MB disk quota" in result.error_message
    assert "disk:quota" in result.limits_enforced and "disk:reserve" in result.limits_enforced
    held = runner.tree_size(result.working_directory) >> 20
    # It wrote (the positive control) and was stopped within a few ticks of the guard (more under load).
    assert 20 <= held < 200, held
    # At its quota, the session still runs code that removes files, and any growth ends a run at once.
    grows = await capped.run("open('more.bin','wb').write(b'x' * (1 << 20)); import time; time.sleep(2)")
    assert grows.termination_reason == "disk_limit", grows
    tidy = await capped.run("import shutil\nshutil.rmtree('fill')\nprint('removed')")
    assert tidy.success and tidy.stdout == "removed\n", tidy
    await capped.assert_recovers()


async def test_no_run_starts_below_the_free_disk_reserve(box: Box) -> None:
    st = os.statvfs(box.base)
    free_mb = st.f_bavail * st.f_frsize >> 20
    refused = await box.with_config(disk_reserve_mb=free_mb + 1024).run("print('ran')")
    assert refused.termination_reason == "not_started" and refused.stdout == "", refused
    assert "below its reserve" in refused.error_message
    # A run that brings the disk below the reserve while it goes on is ended.
    tight = box.with_config(disk_reserve_mb=max(0, free_mb - 40), max_disk_mb=100000, max_file_size_mb=1024)
    result = await tight.run(FILL, timeout=30)
    assert result.termination_reason == "disk_limit", result
    assert "reserve" in result.error_message
    await box.assert_recovers()


async def test_warm_runs_of_two_sessions_share_only_what_the_readme_says(best_box: Box) -> None:
    # Shared by a fork, and documented as such: the string-hash secret. Never shared: random state.
    probe = (
        "import sys\nloaded = 'random' in sys.modules and 'preloaded' or 'fresh'\n"
        "import random, secrets, uuid\n"
        "print(loaded, hash('x'), random.random(), secrets.token_hex(8), uuid.uuid4())"
    )
    first = await best_box.run(probe, session="share-a-" + uuid.uuid4().hex[:8])
    second = await best_box.run(probe, session="share-b-" + uuid.uuid4().hex[:8])
    a, b = first.stdout.split(), second.stdout.split()
    assert a[0] == b[0] == "fresh", (a, b)  # the zygote never imported random: each run seeds its own
    assert all(x != y for x, y in zip(a[2:], b[2:], strict=True)), (a, b)
    if best_box.isolation == "bwrap":  # warm starts need bubblewrap
        assert a[1] == b[1], (a, b)
    # A run that wants its own secret asks for it, and starts cold.
    own = await best_box.run(probe, env={"PYTHONHASHSEED": "random"})
    assert own.stdout.split()[1] != a[1], (own.stdout, a)
