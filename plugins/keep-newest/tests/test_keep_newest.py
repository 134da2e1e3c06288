"""The ec2-sandbox-keep-newest cleanup policy: its choice on synthetic inventories, then end to end.

End to end, real tasks and sessions are created through the local transport, their ages are set with
``os.utime`` on the records the runner's inventory reads, and the policy (found through its entry point and
selected by ``SandboxConfig.cleanup_policy``) must remove exactly the right ones.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from ec2_sandbox_keep_newest import DEFAULT_KEEP, ENV_VAR, KeepNewestPolicy
from support.ages import age, age_task
from support.plugins import registry_with

from ec2_sandbox import AsyncSandbox, ConfigError, SandboxConfig, TaskNotFoundError
from ec2_sandbox.cleanup import Inventory, InventoryEntry
from ec2_sandbox.plugins import Registry
from ec2_sandbox.tools import TOOLS_BY_NAME

NOW = 1_800_000_000.0
HOUR = 3600.0
CONFIG = SandboxConfig(cleanup_policy="keep-newest")


def task(tid: str, age_h: float) -> list[InventoryEntry]:
    """A session-less task: its work dir and its run record."""
    return [
        InventoryEntry(kind="task", id=tid, mtime=NOW - age_h * HOUR),
        InventoryEntry(kind="run", id=tid, mtime=NOW - age_h * HOUR, session_id=None),
    ]


def session(sid: str, age_h: float, run_ages: dict[str, float]) -> list[InventoryEntry]:
    return [InventoryEntry(kind="session", id=sid, mtime=NOW - age_h * HOUR)] + [
        InventoryEntry(kind="run", id=rid, mtime=NOW - a * HOUR, session_id=sid)
        for rid, a in run_ages.items()
    ]


def chosen(policy: KeepNewestPolicy, entries: list[InventoryEntry], hours: float = 0) -> set[tuple[str, str]]:
    inventory = Inventory(base_dir="/x", now=NOW, entries=entries)
    picked = policy.select(inventory, hours, CONFIG)
    assert len(picked) == len({(e.kind, e.id) for e in picked}), "an entry was chosen twice"
    return {(e.kind, e.id) for e in picked}


# ---------------------------------------------------------------------- the choice
def test_keeps_the_newest_n_session_less_tasks() -> None:
    entries = task("a" * 12, 5) + task("b" * 12, 1) + task("c" * 12, 3) + task("d" * 12, 4)
    assert chosen(KeepNewestPolicy(keep=2), entries) == {
        ("task", "a" * 12),
        ("run", "a" * 12),
        ("task", "d" * 12),
        ("run", "d" * 12),
    }


def test_an_ephemeral_run_record_counts_as_a_task() -> None:
    orphan = [InventoryEntry(kind="run", id="e" * 12, mtime=NOW - 9 * HOUR, session_id=None)]
    entries = task("a" * 12, 1) + orphan
    assert chosen(KeepNewestPolicy(keep=1), entries) == {("run", "e" * 12)}


def test_keeps_the_newest_n_runs_of_each_session_and_the_session_itself() -> None:
    entries = session("s1", 0.5, {"1" * 12: 3, "2" * 12: 2, "3" * 12: 1}) + session("s2", 2, {"4" * 12: 2})
    assert chosen(KeepNewestPolicy(keep=2), entries) == {("run", "1" * 12)}


def test_sessions_beyond_n_go_with_all_their_runs() -> None:
    entries = (
        session("new", 1, {"1" * 12: 1})
        + session("mid", 2, {"2" * 12: 2})
        + session("old", 3, {"3" * 12: 3, "4" * 12: 4})
    )
    assert chosen(KeepNewestPolicy(keep=2), entries) == {
        ("session", "old"),
        ("run", "3" * 12),
        ("run", "4" * 12),
    }


def test_a_sessions_age_is_its_latest_use() -> None:
    # the dir of 'busy' is older but one of its runs is the newest thing on the target
    entries = session("busy", 9, {"1" * 12: 0.1}) + session("idle", 5, {})
    assert chosen(KeepNewestPolicy(keep=1), entries) == {("session", "idle")}


def test_hours_is_a_grace_period() -> None:
    entries = task("a" * 12, 0.5) + task("b" * 12, 1.5) + task("c" * 12, 3) + task("d" * 12, 0.1)
    policy = KeepNewestPolicy(keep=1)
    assert chosen(policy, entries, hours=0) == {(k, i * 12) for i in "abc" for k in ("task", "run")}
    assert chosen(policy, entries, hours=1) == {(k, i * 12) for i in "bc" for k in ("task", "run")}
    assert chosen(policy, entries, hours=24) == set()


def test_keep_zero_removes_everything_past_the_grace_period() -> None:
    entries = task("a" * 12, 1) + session("s", 2, {"1" * 12: 2})
    assert chosen(KeepNewestPolicy(keep=0), entries) == {
        ("task", "a" * 12),
        ("run", "a" * 12),
        ("session", "s"),
        ("run", "1" * 12),
    }


def test_ties_are_broken_by_id() -> None:
    entries = task("b" * 12, 1) + task("a" * 12, 1) + task("c" * 12, 1)
    assert chosen(KeepNewestPolicy(keep=2), entries) == {("task", "a" * 12), ("run", "a" * 12)}


def test_n_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [e for i in range(12) for e in task(f"{i:012x}", i + 1)]
    policy = KeepNewestPolicy()
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert policy.resolved_keep() == DEFAULT_KEEP == 10
    assert len(chosen(policy, entries)) == 2 * 2
    monkeypatch.setenv(ENV_VAR, "3")
    assert len(chosen(policy, entries)) == 9 * 2
    monkeypatch.setenv(ENV_VAR, "-1")
    with pytest.raises(ConfigError, match="EC2_SANDBOX_KEEP_NEWEST='-1'"):
        policy.resolved_keep()
    with pytest.raises(ConfigError, match="keep must be a whole number"):
        KeepNewestPolicy(keep=-2)


# ---------------------------------------------------------------------- end to end
@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    reg = registry_with(monkeypatch, None)
    assert reg.owners.get("cleanup_policy:keep-newest") == "keep-newest", reg.errors
    return reg


@pytest.fixture
async def sandbox(registry: Registry, tmp_base_dir: str) -> AsyncIterator[AsyncSandbox]:
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, cleanup_policy="keep-newest")
    async with AsyncSandbox(config, registry=registry) as sb:
        yield sb


def keeping(sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch, n: int) -> str:
    """Have the policy keep ``n``; the sandbox's base dir, where the tests age what the runs left."""
    monkeypatch.setenv(ENV_VAR, str(n))
    base = sandbox.config.base_sandbox_dir
    assert base is not None
    return base


async def run(sandbox: AsyncSandbox, session_id: str | None = None) -> str:
    result = await sandbox.execute_code("echo ran > out.txt", "sh", session_id=session_id)
    assert result.success, result
    return result.task_hash


async def test_end_to_end_removes_exactly_the_right_tasks(
    sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = keeping(sandbox, monkeypatch, 2)
    tasks = [await run(sandbox) for _ in range(4)]
    s1 = [await run(sandbox, "s1") for _ in range(3)]
    s2 = [await run(sandbox, "s2")]
    s3 = [await run(sandbox, "s3")]
    # ages in hours: tasks 4..1 (tasks[0] oldest), s1's runs 3..1, sessions s1 newest, s3 oldest
    for i, t in enumerate(tasks):
        age_task(base, t, 4 - i)
    for i, r in enumerate(s1):
        age(base, "run", r, 3 - i)
    age(base, "session", "s1", 0.5)
    age(base, "session", "s2", 5)
    age(base, "run", s2[0], 5)
    age(base, "session", "s3", 6)
    age(base, "run", s3[0], 6)

    result = await sandbox.cleanup_tasks(hours=0)
    assert result.policy == "keep-newest"
    removed = {(e.kind, e.id) for e in result.removed}
    assert removed == {
        ("task", tasks[0]),
        ("run", tasks[0]),
        ("task", tasks[1]),
        ("run", tasks[1]),
        ("run", s1[0]),
        ("session", "s3"),
        ("run", s3[0]),
    }
    for gone in (tasks[0], tasks[1], s1[0], s3[0]):
        with pytest.raises(TaskNotFoundError):
            await sandbox.list_task_files(gone)
    for kept in (tasks[2], tasks[3]):
        assert await sandbox.get_task_files(kept, "out.txt") == "ran\n"
    assert (await sandbox.get_task_files(s1[2], "@stdout")) == ""
    assert sorted(os.listdir(os.path.join(base, "sessions"))) == ["s1", "s2"]
    # a second cleanup finds nothing more to do
    assert (await sandbox.cleanup_tasks(hours=0)).removed == []


async def test_end_to_end_through_the_cleanup_tool_with_a_grace_period(
    sandbox: AsyncSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = keeping(sandbox, monkeypatch, 1)
    tasks = [await run(sandbox) for _ in range(3)]
    age_task(base, tasks[0], 30)
    # tasks[1] and tasks[2] are recent: past N, but within the 24 h grace period
    result = await TOOLS_BY_NAME["ec2_cleanup_tasks"].invoke(sandbox, {"hours": 24})
    assert result.policy == "keep-newest"  # type: ignore[attr-defined]
    assert {(e.kind, e.id) for e in result.removed} == {("task", tasks[0]), ("run", tasks[0])}  # type: ignore[attr-defined]
    assert sorted(os.listdir(os.path.join(base, "tasks"))) == sorted(tasks[1:])


async def test_the_age_policy_is_still_the_default(registry: Registry, tmp_base_dir: str) -> None:
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir), registry=registry) as sandbox:
        await run(sandbox)
        await run(sandbox)
        result = await sandbox.cleanup_tasks(hours=0)
    assert result.policy == "age"
    assert len(result.removed) == 4  # both tasks, with their run records: age keeps no minimum


async def test_the_policy_is_unknown_without_the_plugin(
    monkeypatch: pytest.MonkeyPatch, tmp_base_dir: str
) -> None:
    from ec2_sandbox import ConfigError as Err

    registry = registry_with(monkeypatch, "perl")
    config = SandboxConfig(base_sandbox_dir=tmp_base_dir, cleanup_policy="keep-newest")
    async with AsyncSandbox(config, registry=registry) as sandbox:
        with pytest.raises(Err, match="cleanup_policy 'keep-newest' is unknown; known: age"):
            await sandbox.cleanup_tasks(hours=0)
