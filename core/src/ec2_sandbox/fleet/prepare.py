"""``ec2-sandbox prepare-instance`` for a whole fleet: the instance setup on every healthy member at once.

The very commands the one-instance form sends (:func:`ec2_sandbox.cli_prepare.build_commands`) go to the
members in one multi-target SendCommand per 50 of them, ``MaxConcurrency`` 10%: a setup installs packages,
and a fleet that prepares a tenth of its members at a time keeps nine tenths serving (the setup is
idempotent, so a member already prepared says so and changes nothing). Each member reports its steps; the
command succeeds only when every member completed.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pydantic import BaseModel

from .. import cli, cli_prepare
from ..config import SandboxConfig
from ..errors import ConfigError, InvalidInputError
from .fanout import FanOut, MemberReply
from .transport import FleetTransport

#: Members set up at once (a percentage of each command's targets, as SSM takes it).
PREPARE_CONCURRENCY = "10%"


class MemberSetup(BaseModel):
    instance_id: str
    ok: bool
    status: str
    steps: list[dict[str, str]]
    problem: str = ""


def outcome(reply: MemberReply) -> MemberSetup:
    steps = cli_prepare.parse_steps(reply.stdout)
    completed = any(s.step == "complete" and s.status == "ok" for s in steps)
    failed = next((s for s in steps if s.status == "failed"), None)
    problem = ""
    if not (reply.status == "Success" and completed):
        problem = (
            f"step {failed.step} failed: {failed.detail}"
            if failed
            else reply.problem()
            or f"SSM status {reply.status}, exit {reply.exit_code}: {reply.stderr.strip()[-500:]}"
        )
    return MemberSetup(
        instance_id=reply.instance_id,
        ok=not problem,
        status=reply.status,
        steps=[{"step": s.step, "status": s.status, "detail": s.detail} for s in steps],
        problem=problem,
    )


async def prepare_fleet(config: SandboxConfig, commands: list[str], timeout: int) -> list[MemberSetup]:
    if config.fleet_member_transport != "ssm":
        raise ConfigError("prepare-instance reaches a fleet through SSM: its members need their SSM agents")
    async with FleetTransport(config) as fleet:
        healthy = (await fleet.discovery.members(max_age=0)).healthy()
        if not healthy:
            raise await fleet._no_member_error()
        fanout = FanOut(fleet.client, max_concurrency=PREPARE_CONCURRENCY)
        replies = await fanout.send(
            [m.instance_id for m in healthy],
            commands,
            execution_timeout=timeout,
            comment="ec2-sandbox prepare-instance (fleet)",
        )
    return [outcome(replies[i]) for i in sorted(replies)]


def cmd_prepare_fleet(args: argparse.Namespace) -> int:
    """The CLI's fleet form: no INSTANCE_ID, an environment that names a fleet."""
    overrides: dict[str, Any] = {}
    if args.region:
        overrides["region"] = args.region
    if args.profile:
        overrides["aws_profile"] = args.profile
    config = cli.environment_config(args, **overrides)
    if not config.is_fleet:
        raise ConfigError(
            "prepare-instance needs INSTANCE_ID, or an environment (-E) naming a fleet to prepare all of it"
        )
    hours = args.cleanup_hours if args.cleanup_hours is not None else config.cleanup_after_hours
    if not 60 <= args.timeout <= 172800 or not 1 <= hours <= 8760:
        raise InvalidInputError("--timeout must be 60 to 172800 seconds and --cleanup-hours 1 to 8760")
    commands = cli_prepare.build_commands(hours, args.setup_root)
    setups = asyncio.run(prepare_fleet(config, commands, args.timeout))
    if args.json:
        cli.print_json({"ok": all(s.ok for s in setups), "members": [s.model_dump() for s in setups]})
    else:
        for setup in setups:
            print(f"{setup.instance_id}: {'prepared' if setup.ok else 'FAILED: ' + setup.problem}")
            for step in setup.steps:
                print(f"  [{step['status']}] {step['step']}: {step['detail']}")
    return 0 if setups and all(s.ok for s in setups) else 1
