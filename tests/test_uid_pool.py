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
import time
from collections.abc import Iterator
from typing import Any

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


def new_pool(top: pathlib.Path, count: int, name: str = "base") -> runner.UidPool:
    base = top / name
    for sub in (runner.RUNS, runner.TASKS, runner.LOCKS):
        (base / sub).mkdir(parents=True)
    os.chmod(base, 0o711)
    first = 3_000_000 + secrets.randbelow(1_000_000) * 64
    return runner.UidPool(str(base), first, count)


@pytest.fixture
def pool(top: pathlib.Path) -> Iterator[runner.UidPool]:
    made = new_pool(top, COUNT)
    yield made
    made.release(list(made.table()))


@pytest.fixture
def big_pool(top: pathlib.Path) -> Iterator[runner.UidPool]:
    """A range of 15 uids for runs: batches of up to 7."""
    made = new_pool(top, 16, "big")
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


def test_uids_are_recycled_in_batches_and_a_uid_with_a_live_process_is_kept(
    big_pool: runner.UidPool,
) -> None:
    pool = big_pool
    held = [finished_task(pool, b"x") for _ in range(15)]
    busy_hash, busy_uid = held[1]
    sleeper = subprocess.Popen(["sleep", "60"], user=busy_uid, group=busy_uid, cwd="/")
    try:
        assert busy_uid in runner.uids_with_processes()  # positive control: the pass over /proc sees it
        # The next claim takes back the batch's uids (7), all but the busy one, in one go.
        assert finished_task(pool, b"y")[1] == held[0][1]
        assert pool.lookup("task:" + busy_hash) == busy_uid
        for old_hash, _ in held[2:7]:
            assert pool.lookup("task:" + old_hash) is None
            meta = json.loads(pathlib.Path(runner.record_dir(pool.base, old_hash), "meta.json").read_text())
            assert meta["uid"] == pool.retired
            assert os.stat(os.path.join(pool.base, runner.TASKS, old_hash)).st_uid == pool.retired
        assert pool.lookup("task:" + held[8][0]) == held[8][1]  # past the batch: kept
        assert finished_task(pool, b"z")[1] == held[2][1]  # the busy uid is passed over
        assert pool.lookup("task:" + busy_hash) == busy_uid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert busy_uid not in runner.uids_with_processes()
    while True:  # once its process is gone, the busy task's uid comes round again
        _, uid = finished_task(pool, b"w")
        if uid == busy_uid:
            break
    assert pool.lookup("task:" + busy_hash) is None


def test_a_process_that_hides_from_the_pass_over_proc_dies_before_its_uid_is_recycled(
    pool: runner.UidPool, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    old_hash, uid = finished_task(pool, b"old")
    others = [finished_task(pool, b"x") for _ in range(COUNT - 2)]
    hidden = subprocess.Popen(["sleep", "60"], user=uid, group=uid, cwd="/")
    root_sleeper = subprocess.Popen(["sleep", "60"], cwd="/")
    try:
        assert uid in runner.uids_with_processes()  # positive control: seen by an honest pass
        # A process that changes pid at every step can be missed by the pass; the sweep still finds it.
        monkeypatch.setattr(runner, "uids_with_processes", lambda: set())
        assert finished_task(pool, b"new")[1] == uid
        assert hidden.wait(timeout=10) == -9
        assert root_sleeper.poll() is None  # nothing else was signalled
        assert pool.lookup("task:" + old_hash) is None
        assert all(pool.lookup("task:" + h) == u for h, u in others)
    finally:
        hidden.kill()
        hidden.wait()
        root_sleeper.kill()
        root_sleeper.wait()


def test_a_sweep_cut_short_recycles_nothing(pool: runner.UidPool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    held = [finished_task(pool, b"x") for _ in range(COUNT - 1)]
    monkeypatch.setattr(runner, "kill_uids", lambda uids: False)
    with pytest.raises(runner.RunnerError, match="all 3 sandbox uids are held"):
        pool.acquire("task:" + secrets.token_hex(16))
    assert all(pool.lookup("task:" + h) == u for h, u in held)
    monkeypatch.undo()
    assert pool.acquire("task:" + secrets.token_hex(16)) == held[0][1]  # positive control


def test_a_zombie_holds_no_uid_but_a_live_process_does(pool: runner.UidPool) -> None:
    uid = pool.first
    proc = subprocess.Popen(["sleep", "60"], user=uid, group=uid, cwd="/")
    try:
        assert uid in runner.uids_with_processes() and runner.uid_has_processes(uid)
        proc.kill()
        # Not reaped yet: a zombie of the uid, which runs nothing.
        for _ in range(100):
            with open(f"/proc/{proc.pid}/status", "rb") as fh:
                if b"\nState:\tZ" in fh.read():
                    break
            time.sleep(0.02)
        assert not runner.uid_has_processes(uid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("batch", [1, 4, 128])
def test_uids_go_round_in_turn_and_the_pool_dirs_stay_small(
    big_pool: runner.UidPool, batch: int, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    pool = big_pool
    monkeypatch.setattr(pool, "RECYCLE_BATCH", batch)
    order = [finished_task(pool, b"x")[1] for _ in range(15 * 20)]
    # Always the uid held longest: round and round the range, however many runs went by.
    assert order == [pool.first + i % 15 for i in range(len(order))]
    # Those a batch took back ahead of their turn are free; the rest are held.
    held = pool.table()
    assert 15 - min(batch, 7) < len(held) <= 15 and order[-1] in held.values()
    entries = {
        sub: len(os.listdir(os.path.join(pool.dir, sub)))
        for sub in os.listdir(pool.dir)
        if os.path.isdir(os.path.join(pool.dir, sub))
    }
    # One file per uid of the range (written over by each holder in turn, never more); none per task.
    assert len(entries) == 512 and max(entries.values()) <= 15
    assert sum(n for sub, n in entries.items() if sub.startswith("k-")) == 0
    assert sum(n for sub, n in entries.items() if sub.startswith("u-")) == 15


def test_the_flat_pool_of_an_earlier_version_is_taken_over(pool: runner.UidPool) -> None:
    os.makedirs(pool.dir, mode=0o700)
    digest = runner.hashlib.sha256(b"session:old").hexdigest()[:40]
    with open(os.path.join(pool.dir, f"u.{pool.first}"), "w") as fh:
        fh.write("session:old")
    with open(os.path.join(pool.dir, "k." + digest), "w") as fh:
        fh.write(str(pool.first))
    with open(os.path.join(pool.dir, "next"), "w") as fh:
        fh.write("0")
    runner._PREPARED.discard(pool.dir)
    assert pool.lookup("session:old") == pool.first
    assert pool.acquire("session:new") == pool.first + 1
    assert pool.table() == {"session:old": pool.first, "session:new": pool.first + 1}
    assert not any(name.startswith(("u.", "k.")) for name in os.listdir(pool.dir))


def test_a_lookup_before_any_pool_finds_nothing_and_makes_nothing(pool: runner.UidPool) -> None:
    runner._PREPARED.discard(pool.dir)
    assert pool.lookup("session:none") is None
    assert not os.path.exists(pool.dir)
    uid = pool.acquire("session:one")  # positive control: once there is a pool, a new process finds it
    runner._PREPARED.discard(pool.dir)
    assert pool.lookup("session:one") == uid


def _claim_many(base: str, first: int, count: int, claims_dir: str, keys: list[str], out) -> None:  # type: ignore[no-untyped-def]
    runner.UID_CLAIMS_DIR = claims_dir
    pool = runner.UidPool(base, first, count)
    out.put([(key, pool.acquire(key)) for key in keys])


def _results_of(workers: list[Any], out: Any) -> list[Any]:
    """Start the processes, take one answer from each, and see each exit cleanly."""
    for worker in workers:
        worker.start()
    got = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return got


def test_processes_and_base_dirs_claiming_at_once_never_share_a_uid(top: pathlib.Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    claims = str(top / "claims")
    monkeypatch.setattr(runner, "UID_CLAIMS_DIR", claims)
    first, count = 3_000_000 + secrets.randbelow(1_000_000) * 64, 64
    bases = []
    for name in ("a", "b"):
        base = top / name
        for sub in (runner.RUNS, runner.TASKS, runner.LOCKS):
            (base / sub).mkdir(parents=True)
        bases.append(str(base))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    # Sessions keep their uids: 4 processes, 2 base dirs, 14 each, all from one range of 63.
    workers = [
        ctx.Process(
            target=_claim_many,
            args=(bases[i % 2], first, count, claims, [f"session:s{i}-{j}" for j in range(14)], out),
        )
        for i in range(4)
    ]
    got = _results_of(workers, out)
    uids = [uid for batch in got for _, uid in batch]
    assert len(uids) == 56 and len(set(uids)) == 56
    for base in bases:
        table = runner.UidPool(base, first, count).table()
        assert len(table) == 28
        for uid in table.values():  # positive control: each uid is claimed machine-wide by its own base dir
            assert (pathlib.Path(claims) / str(uid)).read_text() == base
    for base in bases:
        pool = runner.UidPool(base, first, count)
        pool.release(list(pool.table()))
    assert not [name for name in os.listdir(claims) if name.isdigit()]


def test_processes_recycling_at_once_keep_the_pool_whole(top: pathlib.Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import multiprocessing

    claims = str(top / "claims")
    monkeypatch.setattr(runner, "UID_CLAIMS_DIR", claims)
    pool = new_pool(top, 16)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    # 3 processes, 40 session-less tasks each, in a range of 15: most claims recycle, some at the same time.
    keys = [[f"task:{secrets.token_hex(16)}" for _ in range(40)] for _ in range(3)]
    workers = [
        ctx.Process(target=_claim_many, args=(pool.base, pool.first, 16, claims, batch, out))
        for batch in keys
    ]
    got = _results_of(workers, out)
    assert sorted(key for batch in got for key, _ in batch) == sorted(key for batch in keys for key in batch)
    assert all(pool.first <= uid < pool.first + 15 for batch in got for _, uid in batch)
    table = pool.table()
    assert 7 < len(table) <= 15 and len(set(table.values())) == len(table)
    # Each holder left was given its uid by one of the claims.
    last = {}
    for batch in got:
        for key, uid in batch:
            last.setdefault(uid, []).append(key)
    for key, uid in table.items():
        assert key in last[uid]
    pool.release(list(table))


def test_a_uid_taken_over_from_a_removed_base_dir_keeps_none_of_its_processes(
    top: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base dir removed by hand leaves its claims, and maybe a process of its runs: the base dir that
    takes such a uid over kills what still runs as it before any run of its own gets it."""
    claims = top / "claims"
    claims.mkdir(mode=0o700)
    monkeypatch.setattr(runner, "UID_CLAIMS_DIR", str(claims))
    pool = new_pool(top, 4)
    (claims / str(pool.first)).write_text(str(top / "removed-base"))
    left = subprocess.Popen(["sleep", "60"], user=pool.first, group=pool.first)
    try:
        assert left.poll() is None  # positive control: the old holder's process runs as the uid
        assert pool.acquire("session:new") == pool.first
        assert left.wait(timeout=10) == -9
        assert (claims / str(pool.first)).read_text() == pool.base
    finally:
        left.kill()
        left.wait()


def test_a_hold_is_two_files_pointing_at_each_other(pool: runner.UidPool) -> None:
    """A uid's file outlives its holder and is written over in place: a stale one, or one a killed runner
    left half written, names nobody; only a holder whose own file points back holds the uid. Control: the
    hold itself, seen by lookup and kept from a second key."""
    uid = pool.acquire("session:a")
    assert pool.lookup("session:a") == uid and pool.acquire("session:b") != uid
    pool.release(["session:a", "session:b"])
    with open(os.path.join(pool.dir, pool._uid_file(uid)), encoding="utf-8") as fh:
        assert fh.read() == "session:a"  # stale: kept, to be written over
    assert pool.lookup("session:a") is None and pool.table() == {}
    for torn in ("session:", "session:ab", "session:a\0"):
        pool._write(pool._uid_file(uid), torn)
        pool._write(pool._key_file("session:a"), str(uid))  # a key file that points at the uid
        assert pool.lookup("session:a") is None and pool._holder(uid) is None  # free for the next claim
    # Written over with a shorter key, the file holds that key alone.
    pool._write(pool._uid_file(uid), "session:longer-name")
    pool._write(pool._uid_file(uid), "session:a")
    assert pool.lookup("session:a") == uid
    pool.release(["session:a"])


def test_a_pool_of_the_layout_before_gives_up_its_files_per_task(pool: runner.UidPool) -> None:
    """Layout "2" kept a file per task too; a hold was both files naming each other. Taken over once: a
    task's file goes and its uid stays held (a runner of layout "2" on the same base dir may have started
    it without one), until recycling takes it back like any finished task's; a session keeps its two
    files."""
    os.makedirs(pool.dir, mode=0o700)
    for shard in range(256):
        for kind in ("k", "u"):
            os.mkdir(os.path.join(pool.dir, f"{kind}-{shard:02x}"), 0o700)
    held, stale, session = pool.first, pool.first + 1, pool.first + 2
    task = secrets.token_hex(16)
    rdir = runner.record_dir(pool.base, task)
    os.mkdir(rdir, 0o700)
    with open(os.path.join(rdir, "meta.json"), "w") as fh:
        json.dump({"task_hash": task, "uid": held}, fh)
    for uid, key, points_back in (
        (held, "task:" + task, True),
        (stale, "task:" + secrets.token_hex(16), False),
        (session, "session:s", True),
    ):
        pool._write(pool._uid_file(uid), key)
        if points_back:
            pool._write(pool._key_file(key), str(uid))
    pool._write("layout", "2")
    runner._PREPARED.discard(pool.dir)
    stale_key = pool._read(pool._uid_file(stale))
    assert pool.table() == {"task:" + task: held, stale_key: stale, "session:s": session}
    assert pool.lookup("task:" + task) == held and pool.lookup("session:s") == session
    assert pool._read(pool._key_file("task:" + task)) is None
    assert pool._read("layout") == pool.LAYOUT
    # A finished task of no run: recycled (its lock and its uid's processes checked) when its turn comes.
    assert pool._locked(lambda: pool._recycle(stale - pool.first, stale_key, set(), 1))
    assert pool._read(pool._uid_file(stale)) == pool.FREE
    pool.release(["task:" + task, "session:s"])
    assert pool.table() == {} and pool._read(pool._uid_file(held)) == pool.FREE
