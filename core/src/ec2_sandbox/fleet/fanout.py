"""One command to many members through SSM's own multi-target dispatch.

``SendCommand`` takes up to 50 instance ids and runs the same document on each, as many at once as
``MaxConcurrency`` allows, each instance reporting its own invocation (SendCommand API reference; "Run
commands at scale"). A fleet-wide operation is therefore one SendCommand per 50 members, not one per member:
the command's progress is read with one ``ListCommands`` call per look (``CompletedCount`` against
``TargetCount``), and each member's output once, with ``GetCommandInvocation``, when the command is done.

``MaxErrors`` is "100%": one member failing must not stop the others (a fleet-wide status or cleanup wants
every member's answer, and says which failed). What a member answers is reported per member
(:class:`MemberReply`), never folded into one success.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from ..errors import TransportError
from ..protocol import runner_sha256, runner_source
from ..transports.ssm import THROTTLING, _script
from .discovery import _chunks

log = logging.getLogger(__name__)

#: SendCommand: "you can specify up to 50 IDs".
MAX_TARGETS = 50
#: SendCommand's TimeoutSeconds (its minimum): members are Online when a fan-out starts.
DELIVERY_TIMEOUT = 30
#: Invocation reads in flight at once (one GetCommandInvocation per member).
READ_WINDOW = 10
#: First and longest pause between looks at a command's progress.
POLL_FIRST, POLL_MAX = 0.1, 2.0
FINAL = ("Success", "Failed", "TimedOut", "Cancelled")


class MemberReply(BaseModel):
    """What one member's invocation of a fan-out command came to."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    status: str
    details: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def ran(self) -> bool:
        """Whether the script ran to an exit status (Failed also names commands that never ran)."""
        return self.status in ("Success", "Failed") and self.details.replace(" ", "") in ("Success", "Failed")

    def problem(self) -> str:
        """Why this member has no result, in words (empty when it has one)."""
        if self.ran:
            return ""
        detail = self.details or self.status
        tail = (self.stderr or "").strip()[-300:]
        return f"SSM status {self.status} ({detail}) on {self.instance_id}" + (f": {tail}" if tail else "")


def runner_commands(request: dict[str, Any], base_dir: str | None) -> list[str]:
    """The AWS-RunShellScript lines that run the runner with ``request``, the runner itself included (a
    fan-out reaches members that may not have it cached; it is cached there afterwards)."""
    payload = json.dumps(request, separators=(",", ":")).encode()
    source = runner_source()
    packed = zlib.compress(f"{len(source)} {len(payload)}\n".encode() + source + payload, 6)
    header: dict[str, Any] = {"mode": "run", "runner": runner_sha256()}
    header["sha256"] = hashlib.sha256(packed).hexdigest()
    if base_dir:
        header["base"] = base_dir
    return _script(header, packed)


def program_commands(program: str, data: dict[str, Any]) -> list[str]:
    """Lines that run a fixed stdlib ``program`` (no single quote in it) with ``data`` as base64 JSON on
    stdin: nothing but the program is shell text."""
    if "'" in program:
        raise ValueError("the program is held in single quotes and may not contain one")
    line = base64.b64encode(json.dumps(data).encode()).decode()
    return [
        "set -u",
        "python3 -I -S -c '" + program.strip() + "' <<'EC2_SANDBOX_DATA'",
        line,
        "EC2_SANDBOX_DATA",
    ]


class FanOut:
    """Sends one command to many instances; ``client(service)`` gives boto3 clients (shared, adaptive)."""

    def __init__(
        self,
        client: Callable[[str], Any],
        *,
        max_concurrency: str = "50",
        poll_first: float = POLL_FIRST,
        poll_max: float = POLL_MAX,
    ) -> None:
        self.client = client
        self.max_concurrency = max_concurrency
        self.poll_first = poll_first
        self.poll_max = poll_max
        #: SendCommand calls made (one per 50 members), for callers and tests to see the dispatch.
        self.commands_sent = 0

    async def send(
        self, instance_ids: list[str], commands: list[str], *, execution_timeout: int, comment: str
    ) -> dict[str, MemberReply]:
        """Run ``commands`` on every instance; one reply per instance, whatever happened to it."""
        replies: dict[str, MemberReply] = {}
        parts = await asyncio.gather(
            *(
                self._one(chunk, commands, execution_timeout, comment)
                for chunk in _chunks(sorted(set(instance_ids)), MAX_TARGETS)
            )
        )
        for part in parts:
            replies.update(part)
        return replies

    async def _one(
        self, instance_ids: list[str], commands: list[str], execution_timeout: int, comment: str
    ) -> dict[str, MemberReply]:
        ssm = self.client("ssm")
        try:
            sent = await asyncio.to_thread(
                ssm.send_command,
                InstanceIds=instance_ids,
                DocumentName="AWS-RunShellScript",
                Comment=comment[:100],
                Parameters={"commands": commands, "executionTimeout": [str(execution_timeout)]},
                TimeoutSeconds=DELIVERY_TIMEOUT,
                MaxConcurrency=self.max_concurrency,
                MaxErrors="100%",
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            why = f"SSM refused the command: {error.get('Code')}: {error.get('Message')}"
            return {i: MemberReply(instance_id=i, status="NotSent", details=why) for i in instance_ids}
        except BotoCoreError as exc:
            why = f"could not reach SSM: {exc}"
            return {i: MemberReply(instance_id=i, status="NotSent", details=why) for i in instance_ids}
        self.commands_sent += 1
        command_id = sent["Command"]["CommandId"]
        deadline = time.monotonic() + DELIVERY_TIMEOUT + execution_timeout + 30
        await self._wait(command_id, len(instance_ids), deadline)
        limit = asyncio.Semaphore(READ_WINDOW)

        async def read(instance_id: str) -> MemberReply:
            async with limit:
                return await self._invocation(command_id, instance_id)

        return dict(zip(instance_ids, await asyncio.gather(*(read(i) for i in instance_ids)), strict=True))

    async def _wait(self, command_id: str, targets: int, deadline: float) -> None:
        """Until every invocation of the command is terminal (one ListCommands per look), or the deadline;
        then the command is cancelled and what did not finish is read as it stands."""
        ssm = self.client("ssm")
        delay = self.poll_first
        while True:
            await asyncio.sleep(delay)
            delay = min(self.poll_max, delay * 1.5)
            try:
                reply = await asyncio.to_thread(ssm.list_commands, CommandId=command_id)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in THROTTLING or code == "InvalidCommandId":  # throttled, or not visible yet
                    delay = min(self.poll_max, max(1.0, delay))
                    continue
                raise TransportError(f"SSM could not report command {command_id}: {exc}") from exc
            except BotoCoreError as exc:
                log.debug("reading command %s failed, retrying: %s", command_id, exc)
                continue
            command = (reply.get("Commands") or [{}])[0]
            done = int(command.get("CompletedCount") or 0) >= int(command.get("TargetCount") or targets)
            if done and command.get("Status") in FINAL:
                return
            if time.monotonic() > deadline:
                log.warning("fan-out command %s did not finish in time: cancelling it", command_id)
                try:
                    await asyncio.to_thread(ssm.cancel_command, CommandId=command_id)
                except (ClientError, BotoCoreError) as exc:
                    log.debug("could not cancel %s: %s", command_id, exc)
                return

    async def _invocation(self, command_id: str, instance_id: str) -> MemberReply:
        ssm = self.client("ssm")
        for attempt in range(8):
            try:
                inv = await asyncio.to_thread(
                    ssm.get_command_invocation, CommandId=command_id, InstanceId=instance_id
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in THROTTLING or code == "InvocationDoesNotExist":
                    await asyncio.sleep(min(self.poll_max, self.poll_first * 2**attempt))
                    continue
                return MemberReply(instance_id=instance_id, status="Unknown", details=str(exc))
            except BotoCoreError as exc:
                return MemberReply(instance_id=instance_id, status="Unknown", details=str(exc))
            return MemberReply(
                instance_id=instance_id,
                status=inv.get("Status", ""),
                details=inv.get("StatusDetails", ""),
                exit_code=inv.get("ResponseCode"),
                stdout=inv.get("StandardOutputContent", ""),
                stderr=inv.get("StandardErrorContent", ""),
            )
        return MemberReply(
            instance_id=instance_id, status="Unknown", details="SSM did not report the invocation"
        )
