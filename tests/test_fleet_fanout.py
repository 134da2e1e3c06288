"""Fan-out: one SendCommand reaches many members, and the stand-in applies SSM's rate controls to it.

The stand-in's side: MaxConcurrency (members running at once), MaxErrors (what is never sent after too many
failures: Terminated), the command's counts and status as ListCommands reports them, and the patterns the
service checks. The fleet's side: status and cleanup across members, each through one command per 50
members, and the merging of members' answers."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import boto3
import pytest
import test_fleet
from test_fleet import REGION, Fleet

from ec2_sandbox.fleet.operations import MemberResult, merge_inventories, merge_removals
from ec2_sandbox.testing import ssm_fleet_standin

# The stand-in server and a fresh fleet per test, as test_fleet makes them.
server, make_fleet = test_fleet.server, test_fleet.make_fleet

pytestmark = pytest.mark.skipif(
    ssm_fleet_standin.usable() is not None, reason=str(ssm_fleet_standin.usable())
)


def send(fleet: Fleet, script: str, **controls: str) -> tuple[Any, str]:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=fleet.server.url)
    reply = ssm.send_command(
        InstanceIds=fleet.members(),
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": [script]},
        **controls,
    )
    return ssm, reply["Command"]["CommandId"]


def finished(ssm: Any, command_id: str, timeout: float = 30) -> dict[str, Any]:
    """The command as ListCommands reports it once every invocation is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        command = ssm.list_commands(CommandId=command_id)["Commands"][0]
        if command["CompletedCount"] == command["TargetCount"] and command["Status"] not in (
            "Pending",
            "InProgress",
        ):
            return command
        time.sleep(0.05)
    raise AssertionError(f"command {command_id} did not finish: {command}")


def invocations(fleet: Fleet, command_id: str) -> list[Any]:
    return [inv for (cid, _), inv in fleet.server.standin.invocations.items() if cid == command_id]


def most_at_once(runs: list[Any]) -> int:
    spans = sorted((inv.started, inv.ended) for inv in runs if inv.started is not None)
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


# ---------------------------------------------------------------------- the stand-in's rate controls


@pytest.mark.parametrize(
    ("controls", "at_once"), [({"MaxConcurrency": "2"}, 2), ({"MaxConcurrency": "25%"}, 1)]
)
def test_max_concurrency_bounds_the_members_running_at_once(
    make_fleet: Any, controls: dict[str, str], at_once: int
) -> None:
    fleet = make_fleet(4)
    ssm, command_id = send(fleet, "sleep 0.3", **controls)
    command = finished(ssm, command_id)
    assert (command["TargetCount"], command["CompletedCount"], command["ErrorCount"]) == (4, 4, 0)
    assert command["Status"] == "Success"
    runs = invocations(fleet, command_id)
    assert sorted(inv.instance_id for inv in runs) == fleet.members()
    assert most_at_once(runs) == at_once  # 25% of 4 is one member at a time


def test_max_errors_zero_stops_sending_after_the_first_failure(make_fleet: Any) -> None:
    fleet = make_fleet(4)
    ssm, command_id = send(fleet, "exit 3", MaxConcurrency="1", MaxErrors="0")
    command = finished(ssm, command_id)
    assert command["Status"] == "Failed" and command["ErrorCount"] == 1 and command["CompletedCount"] == 4
    details = sorted(
        ssm.get_command_invocation(CommandId=command_id, InstanceId=i)["StatusDetails"]
        for i in fleet.members()
    )
    assert details == ["Failed", "Terminated", "Terminated", "Terminated"]
    assert sum(1 for inv in invocations(fleet, command_id) if inv.started is not None) == 1


def test_failures_within_max_errors_let_every_member_run_and_end_incomplete(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    victim = fleet.members()[1]
    ssm, command_id = send(fleet, f'test "$AWS_SSM_INSTANCE_ID" != {victim}', MaxErrors="100%")
    command = finished(ssm, command_id)
    assert (command["Status"], command["StatusDetails"], command["ErrorCount"]) == ("Failed", "Incomplete", 1)
    statuses = {
        i: ssm.get_command_invocation(CommandId=command_id, InstanceId=i)["Status"] for i in fleet.members()
    }
    assert statuses == {i: "Failed" if i == victim else "Success" for i in fleet.members()}


@pytest.mark.parametrize(
    "controls",
    [{"MaxConcurrency": "0"}, {"MaxConcurrency": "101%"}, {"MaxErrors": "-1"}, {"MaxErrors": "5x"}],
)
def test_rate_controls_outside_the_service_patterns_are_refused(
    make_fleet: Any, controls: dict[str, str]
) -> None:
    fleet = make_fleet(1)
    with pytest.raises(Exception, match="ValidationException"):
        send(fleet, "true", **controls)
    assert not fleet.server.standin.invocations


# ---------------------------------------------------------------------- fleet-wide operations


async def test_status_is_a_row_per_member_from_one_command(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    async with fleet.sandbox() as sandbox:
        first = await sandbox.execute_code("print(1)", session_id="st-1")
        assert first.success
        sent = fleet.server.standin.calls["SendCommand"]
        status = await sandbox.instance_status()
    # one command for the members' table, one for the runner's probe on one member
    assert fleet.server.standin.calls["SendCommand"] - sent == 2
    (part,) = [p for p in status.parts if p.name == "fleet"]
    assert part.ok, part
    rows = {row["instance_id"]: row for row in part.details["members"]}
    assert sorted(rows) == fleet.members()
    (home,) = [i for i, row in rows.items() if row["sessions"] == 1]
    assert rows[home]["sessions_on_disk"] == 1 and rows[home]["slots_held"] == 1
    for row in rows.values():
        assert row["healthy"] and len(row["load"]) == 3 and row["disk_free_mb"] > 0 and row["cpus"] >= 1
    assert len(part.details["table"]) == 4 and home in part.details["table"][1 + sorted(rows).index(home)]


async def test_status_names_a_member_that_does_not_answer(make_fleet: Any) -> None:
    fleet = make_fleet(2)
    victim = fleet.members()[0]
    fleet.server.standin.outcome[victim] = "AccessDenied"
    async with fleet.sandbox() as sandbox:
        status = await sandbox.instance_status()
    (part,) = [p for p in status.parts if p.name == "fleet"]
    assert not part.ok and f"no report from {victim}" in part.message
    (row,) = [r for r in part.details["members"] if r["instance_id"] == victim]
    assert "AccessDenied" in row["report_error"]


async def test_cleanup_removes_tasks_on_every_member_through_two_commands(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    async with fleet.sandbox() as sandbox:
        # Sessions hold their slots, so placement (least loaded first) spreads them over the three members.
        sessions = [f"c-{n}" for n in range(6)]
        results = [await sandbox.execute_code("open('f','w').write('x')", session_id=s) for s in sessions]
        assert all(r.success for r in results)
        assert len(set(fleet.instances_that_ran())) == 3
        results += [await sandbox.execute_code("print(1)") for _ in range(3)]
        sent = fleet.server.standin.calls["SendCommand"]
        cleaned = await sandbox.cleanup_tasks(hours=0)
        assert fleet.server.standin.calls["SendCommand"] - sent == 2  # inventory, then remove
        assert set(cleaned.removed_sessions) == set(sessions)
        assert set(cleaned.removed_tasks) == {r.task_hash for r in results[6:]}
        assert {e.id for e in cleaned.removed if e.kind == "run"} == {r.task_hash for r in results}
        again = await sandbox.cleanup_tasks(hours=0)
    assert again.removed == [] and again.skipped == []
    assert cleaned.unreached == [] and again.unreached == []  # every member looked at


async def test_cleanup_names_the_members_it_could_not_look_at(make_fleet: Any) -> None:
    """A stopped member keeps its sessions' files on its disk: the cleanup cannot reach them, says so by
    instance id and why, and removes what the others hold."""
    from ec2_sandbox.presentation import render_cleanup

    fleet = make_fleet(2)
    async with fleet.sandbox() as sandbox:
        made = [await sandbox.execute_code("print(1)", session_id=f"u-{n}") for n in range(2)]
        assert all(r.success for r in made) and len(set(fleet.instances_that_ran())) == 2
        running = made[1]
        victim = fleet.instances_that_ran()[0]
        fleet.ec2.stop_instances(InstanceIds=[victim])
        cleaned = await sandbox.cleanup_tasks(hours=0)
    (missed,) = cleaned.unreached
    assert missed.target == victim and "stopped" in missed.error
    assert cleaned.removed_sessions == [running.session_id]  # not the stopped member's
    assert f"NOT reached, nothing of theirs looked at or removed: {victim}" in render_cleanup(cleaned).text


async def test_cleanup_keeps_what_is_younger_than_asked(make_fleet: Any) -> None:
    fleet = make_fleet(2)
    async with fleet.sandbox() as sandbox:
        kept = await sandbox.execute_code("print(1)", session_id="young")
        assert kept.success
        cleaned = await sandbox.cleanup_tasks(hours=1)
        again = await sandbox.execute_code("print(2)", session_id="young")
    assert cleaned.removed == []
    assert again.success


# ---------------------------------------------------------------------- merging members' answers


def inventory_of(instance_id: str, now: float, kind: str, entry: str, mtime: float) -> MemberResult:
    entries = [{"kind": kind, "id": entry, "mtime": mtime}]
    return MemberResult(instance_id=instance_id, result={"base_dir": "/b", "now": now, "entries": entries})


def test_merged_inventory_keeps_each_entry_s_age_as_its_member_measured_it() -> None:
    answers = {
        "i-a": inventory_of("i-a", 1000.0, "task", "t1", 400.0),
        # this member's clock is an hour ahead: its entry is 100 s old, not an hour and 100 s
        "i-b": inventory_of("i-b", 4600.0, "session", "s", 4500.0),
        "i-c": MemberResult(instance_id="i-c", error="unreachable"),
    }
    inventory, where = merge_inventories(answers, now=2000.0)
    ages = {e["id"]: inventory["now"] - e["mtime"] for e in inventory["entries"]}
    assert ages == {"t1": 600.0, "s": 100.0}
    assert where == {("task", "t1"): {"i-a"}, ("session", "s"): {"i-b"}}
    assert inventory["unreached"] == {"i-c": "unreachable"}


def test_merged_removal_reports_entries_of_a_silent_member_as_skipped() -> None:
    where = {("task", "t1"): {"i-a"}, ("task", "t2"): {"i-b"}}
    answers = {
        "i-a": MemberResult(
            instance_id="i-a",
            result={"base_dir": "/b", "removed": [{"kind": "task", "id": "t1"}], "skipped": []},
        ),
        "i-b": MemberResult(instance_id="i-b", error="SSM status Failed (AccessDenied)"),
    }
    wanted = [{"kind": "task", "id": "t1"}, {"kind": "task", "id": "t2"}]
    merged = merge_removals(answers, wanted, where)
    assert merged["removed"] == [{"kind": "task", "id": "t1"}]
    (skipped,) = merged["skipped"]
    assert (
        skipped["id"] == "t2"
        and "i-b did not answer" in skipped["reason"]
        and "AccessDenied" in skipped["reason"]
    )


def test_chunks_of_fifty() -> None:
    from ec2_sandbox.fleet.fanout import MAX_TARGETS, _chunks

    ids = [f"i-{n:08x}" for n in range(120)]
    parts = list(_chunks(ids, MAX_TARGETS))
    assert [len(p) for p in parts] == [50, 50, 20] and list(itertools.chain(*parts)) == ids


# ---------------------------------------------------------------------- prepare-instance for a fleet


def stub_root(root: str) -> None:
    """What the setup looks for on an instance (the stand-in runs it here, below a scratch root)."""
    from pathlib import Path

    base = Path(root)
    (base / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "python3", "node", "bwrap", "iptables"):
        (base / "usr" / "bin" / tool).write_text("#!/bin/sh\n")
        (base / "usr" / "bin" / tool).chmod(0o755)


def test_prepare_instance_sets_up_every_member_and_names_the_one_that_failed(
    make_fleet: Any, tmp_path: Any, capsys: Any
) -> None:
    import json

    from ec2_sandbox import cli

    fleet = make_fleet(3)
    root = str(tmp_path / "root")
    os.mkdir(root)  # the mount point each member's own copy is bound over
    ssm_fleet_standin.FLEET.instance_paths.append(root)  # each member has its own /etc below the root
    members = fleet.members()
    for member in members:
        stub_root(ssm_fleet_standin.FLEET.disk(member, root))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": fleet.config().model_dump(exclude_defaults=True)}))
    argv = ["--config", str(config), "-E", "agents", "prepare-instance", "--setup-root", root, "--json"]
    sent = fleet.server.standin.calls["SendCommand"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert fleet.server.standin.calls["SendCommand"] - sent == 1  # one command for the three members
    assert report["ok"] and [m["instance_id"] for m in report["members"]] == members
    for member in report["members"]:
        steps = {s["step"]: s["status"] for s in member["steps"]}
        assert steps["uid-range"] == "changed" and steps["complete"] == "ok"
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=fleet.server.url)
    (command,) = [
        c for c in ssm.list_commands()["Commands"] if c["Comment"].startswith("ec2-sandbox prepare")
    ]
    assert command["MaxConcurrency"] == "10%" and command["TargetCount"] == 3
    # One member's /etc/passwd now holds an id in the sandbox range: that member fails, by name and step.
    victim = members[1]
    with open(f"{ssm_fleet_standin.FLEET.disk(victim, root)}/etc/passwd", "a") as fh:
        fh.write("intruder:x:200001:100::/:/bin/sh\n")
    assert cli.main(argv[:-1]) == 1
    out = capsys.readouterr().out
    assert f"{victim}: FAILED: step uid-range failed" in out
    assert sum(1 for line in out.splitlines() if line.endswith(": prepared")) == 2
