"""Fleet-wide operations: a runner request on every member, and the answers put together.

Over SSM a request goes to all members in one multi-target command per 50 of them (:mod:`.fanout`); over
SSH/EIC, through each member's own connection at once. Either way every member answers for itself
(:class:`MemberResult`): one that cannot be reached is named, never taken for an empty answer.

* **Cleanup.** ``inventory`` asks every healthy member for its tasks and sessions and merges the lists;
  each entry's age is kept as its member measured it (members' clocks may differ from each other and from
  this client's). ``remove`` then goes to the members that hold the chosen entries (all healthy members
  when it is not known), each removing what it has; what a member could not be asked to remove is reported
  as skipped, with the reason.
* **Status.** :data:`.member_status.PROGRAM` on every healthy member: load, memory, disk, session and task
  dirs, beside what the table says of its slots and sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import protocol
from ..errors import SandboxError
from ..protocol import RunnerRefusal
from ..transports.base import LineCallback, RunnerOutput, Transport
from .fanout import FanOut, MemberReply, runner_commands

EntryKey = tuple[str, str]


class MemberResult(BaseModel):
    """One member's answer to a runner request: its ``result``, or why there is none."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    result: dict[str, Any] | None = None
    error: str | None = None


class _Replayed(Transport):
    """A member's finished invocation, served as a transport's answer so that :func:`protocol.call` reads
    its envelope exactly as for a single instance."""

    name = "ssm"

    def __init__(self, reply: MemberReply) -> None:
        self.reply = reply

    @property
    def target(self) -> str:
        return self.reply.instance_id

    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        if not self.reply.ran:
            raise RunnerRefusal("unreachable", self.reply.problem())
        return RunnerOutput(
            int(self.reply.exit_code or 0), self.reply.stdout.encode(), self.reply.stderr.encode()
        )


async def _answer(instance_id: str, call: Awaitable[dict[str, Any]]) -> MemberResult:
    try:
        return MemberResult(instance_id=instance_id, result=await call)
    except SandboxError as exc:
        return MemberResult(instance_id=instance_id, error=str(exc))


async def on_members(
    request: dict[str, Any],
    instance_ids: list[str],
    *,
    timeout: float,
    fanout: FanOut | None,
    member: Callable[[str], Transport],
) -> dict[str, MemberResult]:
    """``request`` on every instance: one multi-target SSM command (``fanout``), or each member's own
    transport at once (SSH/EIC fleets)."""
    if fanout is not None:
        replies = await fanout.send(
            instance_ids,
            runner_commands(request, request.get("base_dir")),
            execution_timeout=max(5, int(timeout)),
            comment=f"ec2-sandbox fleet {request.get('op')}",
        )
        calls = {i: protocol.call(_Replayed(reply), request, timeout=timeout) for i, reply in replies.items()}
    else:
        calls = {i: protocol.call(member(i), request, timeout=timeout) for i in instance_ids}
    answers = await asyncio.gather(*(_answer(i, call) for i, call in calls.items()))
    return {a.instance_id: a for a in answers}


def merge_inventories(
    answers: dict[str, MemberResult], now: float | None = None
) -> tuple[dict[str, Any], dict[EntryKey, set[str]]]:
    """One inventory of the fleet, and which members hold each entry; members that did not answer are
    named under ``unreached``, with why.

    Each entry's mtime is moved by the difference between its member's clock and ``now``, so that its age
    is what its member measured."""
    now = time.time() if now is None else now
    entries: list[dict[str, Any]] = []
    where: dict[EntryKey, set[str]] = {}
    base = ""
    for instance_id, answer in sorted(answers.items()):
        if answer.result is None:
            continue
        base = base or str(answer.result.get("base_dir", ""))
        shift = now - float(answer.result["now"])
        for entry in answer.result["entries"]:
            key = (entry["kind"], entry["id"])
            if key not in where:
                entries.append({**entry, "mtime": float(entry["mtime"]) + shift})
            where.setdefault(key, set()).add(instance_id)
    unreached = {i: str(a.error) for i, a in answers.items() if a.result is None}
    return {"base_dir": base, "now": now, "entries": entries, "unreached": unreached}, where


def merge_removals(
    answers: dict[str, MemberResult], wanted: list[dict[str, Any]], where: dict[EntryKey, set[str]]
) -> dict[str, Any]:
    """One ``remove`` result. An entry is normally on one member; one found on several (a member that
    answered for a disk it shares) is reported as each member left it: removed by one, and skipped, with the
    member named, by another that kept it. An entry of a member that did not answer is skipped, with why."""
    removed: dict[EntryKey, dict[str, Any]] = {}
    skipped: dict[tuple[EntryKey, str], dict[str, Any]] = {}
    base = ""
    for instance_id, answer in sorted(answers.items()):
        if answer.result is None:
            continue
        base = base or str(answer.result.get("base_dir", ""))
        for entry in answer.result.get("removed", []):
            removed[(entry["kind"], entry["id"])] = entry
        for entry in answer.result.get("skipped", []):
            reason = f"on {instance_id}: {entry.get('reason', '')}"
            skipped[((entry["kind"], entry["id"]), instance_id)] = {**entry, "reason": reason}
    for item in wanted:
        key = (str(item.get("kind")), str(item.get("id")))
        for instance_id in sorted(where.get(key, ())):
            error = answers.get(instance_id, MemberResult(instance_id=instance_id, error="not asked")).error
            if error:
                reason = f"its member {instance_id} did not answer: {error}"
                skipped[(key, instance_id)] = {"kind": key[0], "id": key[1], "reason": reason}
    return {"base_dir": base, "removed": list(removed.values()), "skipped": list(skipped.values())}
