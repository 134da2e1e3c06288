"""The fleet's part of ``instance_status``: a row per member - health, slots, sessions, load, disk.

Health comes from discovery (EC2 state, Auto Scaling lifecycle, SSM ping), slots and placed sessions from
the table, and load, memory, disk and the session and task dirs on disk from the members themselves: one
multi-target command (:data:`.member_status.PROGRAM`) over SSM, the runner's probe over SSH/EIC (disk only:
the probe reports no load). A healthy member that does not answer makes the part not ok, and its row says
why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..schema import StatusPart
from . import member_status
from .discovery import source_name
from .fanout import program_commands

if TYPE_CHECKING:
    from .transport import FleetTransport

#: Seconds a member's report may take (a fixed, small program).
STATUS_SECONDS = 60
MB = 2**20


async def _reports(fleet: FleetTransport, instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each member's measured facts, or ``{"report_error": why}``."""
    if not instance_ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    if fleet.fanout is not None:
        replies = await fleet.fanout.send(
            instance_ids,
            program_commands(member_status.PROGRAM, {"base": fleet.config.base_sandbox_dir}),
            execution_timeout=STATUS_SECONDS,
            comment="ec2-sandbox fleet status",
        )
        for instance_id, reply in replies.items():
            load = member_status.parse(reply.stdout) if reply.ran else None
            if load is None:
                out[instance_id] = {"report_error": reply.problem() or "no report in its output"}
                continue
            out[instance_id] = {
                "load": list(load.load),
                "cpus": load.cpus,
                "mem_available_mb": None
                if load.mem_available_bytes is None
                else load.mem_available_bytes // MB,
                "disk_free_mb": load.disk_free_bytes // MB,
                "disk_total_mb": load.disk_total_bytes // MB,
                "sessions_on_disk": load.sessions_on_disk,
                "tasks_on_disk": load.tasks_on_disk,
            }
        return out
    request = protocol.request("probe", fleet.config.base_sandbox_dir, runtimes=[])
    answers = await fleet.on_members(request, instance_ids, STATUS_SECONDS)
    for instance_id, answer in answers.items():
        if answer.result is None:
            out[instance_id] = {"report_error": answer.error}
        else:
            out[instance_id] = {
                "load": None,
                "disk_free_mb": int(answer.result["disk_free_bytes"]) // MB,
                "disk_total_mb": int(answer.result["disk_total_bytes"]) // MB,
            }
    return out


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as aligned text, for people."""
    lines = [f"{'member':<21} {'health':<9} {'slots':>9} {'sessions':>8} {'load 1m':>8} {'disk free':>10}"]
    for row in rows:
        load = row.get("load")
        free = row.get("disk_free_mb")
        lines.append(
            f"{row['instance_id']:<21} {'healthy' if row['healthy'] else 'unhealthy':<9} "
            f"{row['slots_held']:>4}/{row['slots']:<4} {row['sessions']:>8} "
            f"{'-' if not load else f'{load[0]:.2f}':>8} {'-' if free is None else f'{free} MB':>10}"
            + (f"  ({row['report_error']})" if row.get("report_error") else "")
        )
    return lines


async def fleet_part(fleet: FleetTransport) -> StatusPart:
    try:
        membership = await fleet.discovery.members(max_age=0)
        leases = await asyncio.to_thread(fleet.store.slots)
    except Exception as exc:
        return StatusPart(name="fleet", ok=False, message=f"cannot read the fleet's state: {exc}")
    healthy = membership.healthy()
    reports = await _reports(fleet, [m.instance_id for m in healthy])
    now = fleet.clock()
    rows = []
    for member in membership.members:
        live = [x for x in leases if x.instance_id == member.instance_id and x.expires >= now and x.holder]
        rows.append(
            {
                "instance_id": member.instance_id,
                "healthy": member.healthy,
                "state": member.state,
                "ping": member.ping,
                "lifecycle": member.lifecycle,
                "slots": fleet.capacity(member),
                "slots_held": len(live),
                "sessions": sum(1 for x in live if x.holder.startswith("session#")),
                **reports.get(member.instance_id, {}),
            }
        )
    total = sum(fleet.capacity(m) for m in healthy)
    used = sum(r["slots_held"] for r in rows if r["healthy"])
    silent = [r["instance_id"] for r in rows if r.get("report_error")]
    message = f"{len(healthy)} of {len(membership.members)} member(s) healthy; {used} of {total} slots held"
    if not healthy:
        message += f"; no member can take commands: {membership.summary()}"
    if silent:
        message += f"; no report from {', '.join(silent)}"
    return StatusPart(
        name="fleet",
        ok=bool(healthy) and not silent,
        message=message,
        details={"source": source_name(fleet.config), "members": rows, "table": _table(rows)},
    )
