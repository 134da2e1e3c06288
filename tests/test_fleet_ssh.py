"""SSH/EIC fleets: one connection per member, opened on its first use, closed when it has been idle.

The members are moto instances of an Auto Scaling group; each is reached with the ``eic`` transport (a key
pushed through moto's EC2 Instance Connect, which the private sshd's AuthorizedKeysCommand serves, as on an
instance) at the private sshd on 127.0.0.1 that stands in for every member's port 22.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_fleet
from support.sshd import Sshd, requires_sshd, running_sshd

from ec2_sandbox import AsyncSandbox
from ec2_sandbox.fleet.transport import FleetTransport
from ec2_sandbox.testing import ssm_fleet_standin

server, make_fleet = test_fleet.server, test_fleet.make_fleet

pytestmark = [
    requires_sshd,
    pytest.mark.skipif(ssm_fleet_standin.usable() is not None, reason=str(ssm_fleet_standin.usable())),
]


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    with running_sshd() as srv:
        yield srv


@pytest.fixture
def eic_pushes(sshd: Sshd) -> Iterator[Sshd]:
    with pytest.MonkeyPatch.context() as patch:
        sshd.eic_keys.patch_moto(patch)
        sshd.eic_keys.pushes.clear()
        yield sshd
        sshd.eic_keys.expire_all()


def eic_sandbox(fleet: test_fleet.Fleet, sshd: Sshd, tmp: Path, idle_close: float) -> AsyncSandbox:
    config = fleet.config(
        fleet_member_transport="eic",
        ssh_user="root",
        ssh_host="127.0.0.1",
        ssh_port=sshd.port,
        ssh_known_hosts=str(tmp / "known_hosts"),
    )
    return AsyncSandbox(config, transport=FleetTransport(config, idle_close=idle_close))


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_one_connection_per_member_opened_on_demand_and_closed_when_idle(
    make_fleet: Any, eic_pushes: Sshd, tmp_path: Path
) -> None:
    sshd = eic_pushes
    fleet = make_fleet(2)
    members = fleet.members()
    baseline = len(sshd.descendants())
    # Idle time long enough that a loaded machine finishes the second run before the first member idles out.
    async with eic_sandbox(fleet, sshd, tmp_path, idle_close=5.0) as sandbox:
        pool = sandbox.transport.members  # type: ignore[attr-defined]
        assert pool.open_ids == []  # nothing is dialled before it is needed
        first = await sandbox.execute_code("print('a')", session_id="ssh-a")
        assert first.success and first.stdout == "a\n", first
        assert len(pool.open_ids) == 1 and len(sshd.eic_keys.pushes) == 1
        second = await sandbox.execute_code("print('b')", session_id="ssh-b")  # least loaded: the other one
        assert second.success, second
        assert pool.open_ids == members and pool.opened == 2
        assert sorted(p["InstanceId"] for p in sshd.eic_keys.pushes) == members  # one key per member
        again = await sandbox.execute_code("print('a2')", session_id="ssh-a")
        assert again.success and pool.opened == 2  # the open connection is reused
        assert len(sshd.descendants()) > baseline
        await until(lambda: pool.open_ids == [])  # idle for idle_close: closed
        await until(lambda: len(sshd.descendants()) <= baseline)  # and gone on the server's side
        later = await sandbox.execute_code("print('c')", session_id="ssh-a")
        assert later.success and later.stdout == "c\n"
        assert pool.opened == 3 and len(sshd.eic_keys.pushes) == 3  # reopened, with a fresh key


async def test_a_run_in_flight_keeps_its_connection_past_the_idle_time(
    make_fleet: Any, eic_pushes: Sshd, tmp_path: Path
) -> None:
    fleet = make_fleet(1)
    async with eic_sandbox(fleet, eic_pushes, tmp_path, idle_close=0.3) as sandbox:
        result = await sandbox.execute_code("import time\ntime.sleep(1.5)\nprint('slept')")
        pool = sandbox.transport.members  # type: ignore[attr-defined]
        assert result.success and result.stdout == "slept\n", result
        assert pool.opened == 1


async def test_cleanup_and_status_across_an_ssh_fleet(
    make_fleet: Any, eic_pushes: Sshd, tmp_path: Path
) -> None:
    fleet = make_fleet(2)
    async with eic_sandbox(fleet, eic_pushes, tmp_path, idle_close=30) as sandbox:
        runs = [await sandbox.execute_code("print(1)", session_id=f"cl-{n}") for n in range(2)]
        assert all(r.success for r in runs)
        status = await sandbox.instance_status()
        cleaned = await sandbox.cleanup_tasks(hours=0)
    (part,) = [p for p in status.parts if p.name == "fleet"]
    assert part.ok, part
    assert all(row["disk_free_mb"] > 0 and row["ping"] is None for row in part.details["members"])
    assert set(cleaned.removed_sessions) == {"cl-0", "cl-1"}
