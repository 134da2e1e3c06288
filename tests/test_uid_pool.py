"""The sandbox uid pool: no limit on runs between cleanups, and a recycled uid never reaches the files of
the task that held it before."""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from ec2_sandbox import runner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uids are handed out by a root runner only")

#: A range of its own per test, far from the runner's: claims are machine-wide.
COUNT = 4


@pytest.fixture
def top() -> Iterator[pathlib.Path]:
    """A dir other uids can pass through (pytest's own tmp dirs are root's alone)."""
    made = pathlib.Path(tempfile.mkdtemp(prefix="ec2sb-uidpool-", dir="/tmp"))
    os.chmod(made, 0o711)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def pool(top: pathlib.Path) -> Iterator[runner.UidPool]:
    base = top / "base"
    for sub in (runner.RUNS, runner.TASKS, runner.LOCKS):
        (base / sub).mkdir(parents=True)
    os.chmod(base, 0o711)
    first = 3_000_000 + secrets.randbelow(1_000_000) * 8
    made = runner.UidPool(str(base), first, COUNT)
    yield made
    made.release(list(made.table()))


def finished_task(pool: runner.UidPool, secret: bytes) -> tuple[str, int]:
    """A task that ran as its uid and left a private file in its work dir, as a run leaves them."""
    task_hash = secrets.token_hex(16)
    uid = pool.acquire("task:" + task_hash)
    workdir = os.path.join(pool.base, runner.TASKS, task_hash)
    os.mkdir(workdir, 0o700)
    os.chown(workdir, uid, uid)
    path = os.path.join(workdir, "secret.txt")
    with open(path, "wb") as fh:
        fh.write(secret)
    os.chmod(path, 0o600)
    os.chown(path, uid, uid)
    rdir = runner.record_dir(pool.base, task_hash)
    os.mkdir(rdir, 0o700)
    with open(os.path.join(rdir, "meta.json"), "w") as fh:
        json.dump({"task_hash": task_hash, "workdir": workdir, "uid": uid}, fh)
    return task_hash, uid


def read_as(uid: int, path: str) -> str:
    """Read ``path`` as ``uid`` (the system's python: this environment's may not be readable by others)."""
    probe = (
        "import sys\ntry:\n print(open(sys.argv[1]).read())\nexcept OSError as e:\n print(type(e).__name__)"
    )
    return subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe, path],
        cwd="/",
        user=uid,
        group=uid,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_runs_go_on_past_the_size_of_the_pool(pool: runner.UidPool) -> None:
    held = [finished_task(pool, b"x") for _ in range(COUNT * 3)]
    assert len({uid for _, uid in held}) == COUNT - 1  # the range's last uid is never handed out
    assert pool.retired not in {uid for _, uid in held}
    # Only the newest tasks still hold theirs.
    assert {key for key in pool.table()} == {"task:" + h for h, _ in held[-(COUNT - 1) :]}


def test_a_recycled_uid_cannot_reach_the_previous_owners_files(
    pool: runner.UidPool, top: pathlib.Path
) -> None:
    old_hash, uid = finished_task(pool, b"old secret")
    old_file = os.path.join(pool.base, runner.TASKS, old_hash, "secret.txt")
    # The old task also left a hard link to its file somewhere its uid could reach later.
    shared = top / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    link = str(shared / "link.txt")
    os.link(old_file, link)
    assert read_as(uid, old_file) == "old secret" and read_as(uid, link) == "old secret"

    while True:  # later tasks, until one is given the old task's uid
        new_hash, new_uid = finished_task(pool, b"new")
        if new_uid == uid:
            break
    assert pool.lookup("task:" + old_hash) is None and pool.lookup("task:" + new_hash) == uid
    assert read_as(uid, old_file) == "PermissionError"
    assert read_as(uid, link) == "PermissionError"
    # The old task's output stays readable through the runner, checked against its files' new owner (once
    # the extra link is gone: a file with two links is refused whoever owns it).
    os.unlink(link)
    page = runner.read_file({"base_dir": pool.base, "task_hash": old_hash, "path": "secret.txt"})
    assert runner.base64.b64decode(page["b64"]) == b"old secret"


def test_sessions_and_running_tasks_keep_their_uids(pool: runner.UidPool) -> None:
    session_uid = pool.acquire("session:long-lived")
    running_hash, running_uid = finished_task(pool, b"busy")
    lock = runner.UseLock(runner.task_lock_path(pool.base, running_hash))  # a run of it is in progress
    try:
        handed = {finished_task(pool, b"x")[1] for _ in range(COUNT * 2)}
        assert session_uid not in handed and running_uid not in handed
        assert pool.lookup("session:long-lived") == session_uid
        assert pool.lookup("task:" + running_hash) == running_uid
    finally:
        lock.release()


def test_the_map_of_earlier_versions_is_taken_over(pool: runner.UidPool) -> None:
    legacy = os.path.join(pool.base, runner.RUNS, "uids.json")
    with open(legacy, "w") as fh:
        json.dump({"session:kept": pool.first + 1}, fh)
    assert pool.lookup("session:kept") == pool.first + 1
    assert pool.acquire("session:kept") == pool.first + 1
    assert pool.acquire("session:other") != pool.first + 1
    assert not os.path.exists(legacy)
