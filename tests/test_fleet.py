"""Fleets: placement, affinity, capacity and lost members, against moto (EC2, Auto Scaling, DynamoDB) and
the SSM stand-in with one disk per instance (commands really run; a session's files exist only on its
member). Every AWS call goes to a moto server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

# The same fake credentials and cleared variables as the single-instance SSM tests.
from test_ssm import CLEARED, FAKE_ENV, REGION

from ec2_sandbox import AsyncSandbox, SandboxConfig, aws_session
from ec2_sandbox.fleet.store import LeaseStore, create_table
from ec2_sandbox.fleet.transport import FleetTransport
from ec2_sandbox.testing import ssm_fleet_standin, ssm_standin

CLIENT = Path(__file__).parent / "support" / "fleet_client.py"
#: Member polls tuned to a stand-in whose commands finish in tens of milliseconds.
FAST_POLLS = {"poll_first": 0.02, "poll_factor": 1.3, "poll_max": 0.2}

pytestmark = pytest.mark.skipif(
    ssm_fleet_standin.usable() is not None, reason=str(ssm_fleet_standin.usable())
)


@pytest.fixture(scope="module")
def server() -> Iterator[ssm_standin.Server]:
    """The stand-in on loopback; fake credentials, none of the developer's AWS settings."""
    with pytest.MonkeyPatch.context() as env, ssm_fleet_standin.serve() as srv:
        for key in CLEARED:
            env.delenv(key, raising=False)
        for key, value in {**FAKE_ENV, "AWS_ENDPOINT_URL": srv.url}.items():
            env.setenv(key, value)
        aws_session.clear_clients()
        yield srv
        aws_session.clear_clients()


class Fleet:
    """One Auto Scaling group and one table, fresh for a test."""

    def __init__(self, server: ssm_standin.Server, base_dir: str, size: int) -> None:
        self.server = server
        self.base_dir = base_dir
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=server.url)
        self.asg = boto3.client("autoscaling", region_name=REGION, endpoint_url=server.url)
        self.ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=server.url)
        self.name = f"fleet-{uuid.uuid4().hex[:10]}"
        self.table = f"{self.name}-leases"
        images = self.ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
        image = next(i["ImageId"] for i in images if i.get("Platform") != "windows")
        self.ec2.create_launch_template(
            LaunchTemplateName=self.name, LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"}
        )
        self.asg.create_auto_scaling_group(
            AutoScalingGroupName=self.name,
            LaunchTemplate={"LaunchTemplateName": self.name},
            MinSize=0,
            MaxSize=10,
            DesiredCapacity=size,
            AvailabilityZones=[f"{REGION}a"],
        )
        create_table(self.ddb, self.table)

    def members(self) -> list[str]:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])["AutoScalingGroups"][
            0
        ]
        return sorted(i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService")

    def config(self, **changes: Any) -> SandboxConfig:
        values: dict[str, Any] = {
            "region": REGION,
            "base_sandbox_dir": self.base_dir,
            "fleet_auto_scaling_group": self.name,
            "fleet_table": self.table,
            "fleet_slots_per_instance": 4,
            "fleet_wait_seconds": 0,
        }
        values.update(changes)
        return SandboxConfig(**values)

    def sandbox(self, **changes: Any) -> AsyncSandbox:
        config = self.config(**changes)
        transport = FleetTransport(config, member_options=FAST_POLLS)
        return AsyncSandbox(config, transport=transport)

    def instances_that_ran(self) -> list[str]:
        return [inv.instance_id for inv in self.server.standin.invocations.values()]


@pytest.fixture
def make_fleet(server: ssm_standin.Server, tmp_base_dir: str) -> Iterator[Any]:
    server.standin.reset()
    ssm_fleet_standin.FLEET.instance_paths = [tmp_base_dir]

    def make(size: int) -> Fleet:
        return Fleet(server, tmp_base_dir, size)

    yield make
    ssm_fleet_standin.FLEET.instance_paths = []
    server.standin.reset()


def run_client(config: SandboxConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {**os.environ}
    proc = subprocess.run(
        [sys.executable, str(CLIENT), config.model_dump_json()],
        input=json.dumps(runs),
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------- affinity


def test_sessions_keep_their_member_across_two_client_processes(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    config = fleet.config()
    sessions = [f"agent-{i}" for i in range(6)]
    write = [{"session": s, "code": f"open('mine.txt','w').write({s!r}); print('wrote')"} for s in sessions]
    first = run_client(config, write)
    assert all(r["success"] for r in first), first
    # The sessions were spread over the members (least loaded first), so a client that ignored the
    # placement would land most of them on a member without their files.
    assert len(set(fleet.instances_that_ran())) == 3
    read = [{"session": s, "code": "print(open('mine.txt').read())"} for s in sessions]
    second = run_client(config, read)
    assert [r["stdout"] for r in second] == [f"{s}\n" for s in sessions], second


# ---------------------------------------------------------------------- a member that disappears


async def test_a_killed_member_s_session_says_its_state_is_gone_then_starts_afresh(make_fleet: Any) -> None:
    fleet = make_fleet(2)
    async with fleet.sandbox() as sandbox:
        first = await sandbox.execute_code("open('notes.txt','w').write('kept')", session_id="s-kill")
        assert first.success, first
        (victim,) = set(fleet.instances_that_ran())
        fleet.ec2.terminate_instances(InstanceIds=[victim])
        lost = await sandbox.execute_code("print(open('notes.txt').read())", session_id="s-kill")
        assert not lost.success and lost.termination_reason == "not_started"
        assert "session 's-kill' is gone" in lost.error_message and victim in lost.error_message
        assert "same session id" in lost.error_message
        again = await sandbox.execute_code(
            "import os\nprint(os.path.exists('notes.txt'))", session_id="s-kill"
        )
    assert again.success and again.stdout == "False\n", again
    assert fleet.instances_that_ran()[-1] != victim
    assert fleet.instances_that_ran().count(victim) == 1  # nothing more was sent to the dead member


# ---------------------------------------------------------------------- capacity


async def test_a_full_fleet_refuses_at_once_and_sends_nothing(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    async with fleet.sandbox(fleet_slots_per_instance=1) as sandbox:
        held = await sandbox.execute_code("print(1)", session_id="holder")
        assert held.success
        sent = fleet.server.standin.calls["SendCommand"]
        refused = await sandbox.execute_code("print(2)")
        other = await sandbox.execute_code("print(3)", session_id="newcomer")
        again = await sandbox.execute_code("print(4)", session_id="holder")
    for result in (refused, other):
        assert not result.success and result.termination_reason == "not_started"
        assert "is full" in result.error_message and "1 slots" in result.error_message
        assert "fleet_wait_seconds" in result.error_message
    assert again.success  # the session keeps its own slot
    assert fleet.server.standin.calls["SendCommand"] == sent + 1


async def test_a_run_waits_for_a_slot_and_never_overlaps_on_the_member(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    async with fleet.sandbox(fleet_slots_per_instance=1, fleet_wait_seconds=60) as sandbox:
        results = await asyncio.gather(
            *(sandbox.execute_code("import time\ntime.sleep(1)\nprint('done')") for _ in range(3))
        )
    assert all(r.success for r in results), results
    runs = sorted(
        (inv.started, inv.ended)
        for inv in fleet.server.standin.invocations.values()
        if inv.started is not None
    )
    assert len(runs) == 3
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end  # one slot: the member never ran two at once


def test_two_clients_racing_for_the_last_slot_exactly_one_wins(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    (member,) = fleet.members()
    for round_ in range(15):
        holders = [f"client-{round_}-{n}" for n in range(4)]
        stores = [LeaseStore(boto3.client("dynamodb", region_name=REGION), fleet.table) for _ in holders]
        barrier = threading.Barrier(len(holders))
        won: list[str] = []  # list.append is atomic: the threads share it safely

        def race(
            store: LeaseStore,
            holder: str,
            barrier: threading.Barrier = barrier,
            index: int = round_,
            won: list[str] = won,
        ) -> None:
            barrier.wait()
            if store.take(member, index, holder, 60):
                won.append(holder)

        threads = [threading.Thread(target=race, args=pair) for pair in zip(stores, holders, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1, (round_, won)
        (lease,) = [x for x in stores[0].slots() if x.index == round_]
        assert lease.holder == won[0]


async def test_two_sandboxes_racing_for_the_last_slot_one_runs_one_is_refused(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    async with (
        fleet.sandbox(fleet_slots_per_instance=1) as one,
        fleet.sandbox(fleet_slots_per_instance=1) as two,
    ):
        results = await asyncio.gather(
            one.execute_code("print('a')", session_id="race-a"),
            two.execute_code("print('b')", session_id="race-b"),
        )
    assert sorted(r.success for r in results) == [False, True], results
    loser = next(r for r in results if not r.success)
    assert "is full" in loser.error_message


async def test_scale_out_is_seen_by_a_waiting_run(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    (first,) = fleet.members()
    async with fleet.sandbox(fleet_slots_per_instance=1, fleet_wait_seconds=60) as sandbox:
        assert (await sandbox.execute_code("print(1)", session_id="busy")).success
        waiting = asyncio.ensure_future(sandbox.execute_code("print('placed')", session_id="new"))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        started = time.monotonic()
        fleet.asg.set_desired_capacity(AutoScalingGroupName=fleet.name, DesiredCapacity=2)
        result = await asyncio.wait_for(waiting, 30)
    assert result.success and result.stdout == "placed\n", result
    assert time.monotonic() - started < 8  # well within fleet_discovery_seconds + waits
    (added,) = set(fleet.members()) - {first}
    assert fleet.instances_that_ran()[-1] == added


# ---------------------------------------------------------------------- files and status


async def test_task_files_are_read_from_the_member_that_ran_the_task(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    async with fleet.sandbox() as writer:
        results = [await writer.execute_code(f"open('out.txt','w').write('{n}')") for n in range(6)]
    assert all(r.success for r in results)
    async with fleet.sandbox() as reader:  # another client: it learns where each task ran from the table
        contents = [await reader.get_task_files(r.task_hash, "out.txt") for r in results]
    assert contents == [str(n) for n in range(6)]


async def test_instance_status_reports_members_and_slots(make_fleet: Any) -> None:
    fleet = make_fleet(2)
    async with fleet.sandbox() as sandbox:
        assert (await sandbox.execute_code("print(1)", session_id="st")).success
        status = await sandbox.instance_status()
    assert status.transport == "fleet"
    (part,) = [p for p in status.parts if p.name == "fleet"]
    assert part.ok and "2 of 2 member(s) healthy; 1 of 8 slots held" in part.message
    assert sorted(m["instance_id"] for m in part.details["members"]) == fleet.members()


# ---------------------------------------------------------------------- the stand-in's own limits


def test_standin_refuses_what_ssm_refuses_and_pages_instance_information(make_fleet: Any) -> None:
    fleet = make_fleet(12)
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=fleet.server.url)
    ids = fleet.members()
    with pytest.raises(ssm.exceptions.ClientError, match="ValidationException"):
        ssm.send_command(
            InstanceIds=[*ids, *ids, *ids, *ids, *ids][:51],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": ["true"]},
        )
    with pytest.raises(ssm.exceptions.ClientError, match="ValidationException"):
        ssm.describe_instance_information(MaxResults=51)
    first = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": ids}])
    assert len(first["InstanceInformationList"]) == 10 and first["NextToken"]
    rest = ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": ids}], NextToken=first["NextToken"]
    )
    seen = [i["InstanceId"] for i in first["InstanceInformationList"] + rest["InstanceInformationList"]]
    assert sorted(seen) == ids and "NextToken" not in rest


async def test_discovery_sees_every_member_of_a_group_larger_than_a_page(make_fleet: Any) -> None:
    fleet = make_fleet(12)
    async with fleet.sandbox() as sandbox:
        members = await sandbox.transport.discovery.members()  # type: ignore[attr-defined]
    assert [m.instance_id for m in members.healthy()] == fleet.members()
    assert all(m.vcpus == 2 for m in members.members)  # t3.micro, from DescribeInstanceTypes


# ---------------------------------------------------------------------- throttling


async def test_many_clients_throttled_by_the_account_back_off_and_all_finish(make_fleet: Any) -> None:
    """Three clients (each its own clients and adaptive rate limiter) share an account whose SSM calls are
    rate-limited: many of their calls are refused with ThrottlingException, and every run still succeeds."""
    fleet = make_fleet(2)
    limits = ssm_fleet_standin.FLEET
    # Tight enough that 21 commands sent at once collide however the machine's load spreads them.
    limits.rate_limits.update({"SendCommand": 2.0, "GetCommandInvocation": 8.0, "ListCommands": 4.0})
    try:
        sandboxes = [fleet.sandbox(fleet_wait_seconds=120) for _ in range(3)]
        try:
            results = await asyncio.gather(
                *(sb.execute_code(f"print({n})") for sb in sandboxes for n in range(6)),
                *(sb.instance_status() for sb in sandboxes),  # fan-out commands in the same crowd
            )
        finally:
            for sb in sandboxes:
                await sb.aclose()
        throttled = dict(limits.throttled)
    finally:
        limits.unthrottle()
    runs, statuses = results[:18], results[18:]
    assert [r.stdout for r in runs] == [f"{n}\n" for _ in range(3) for n in range(6)], runs
    assert all(s.healthy for s in statuses), statuses
    # The positive control: the account really refused calls (adaptive clients slow down, so how many
    # varies with the machine's load).
    assert throttled.get("SendCommand", 0) + throttled.get("GetCommandInvocation", 0) >= 3, throttled
