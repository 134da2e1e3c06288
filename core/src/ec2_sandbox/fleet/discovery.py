"""Which instances make up a fleet, and which of them can take commands now.

Candidates come from the configured source (an Auto Scaling group's instances, instances carrying every
configured tag, or a list of ids), their EC2 state and type from ``DescribeInstances``, their vCPUs from
``DescribeInstanceTypes`` and their agent's health from SSM ``DescribeInstanceInformation`` (PingStatus).
The answer is reused for ``fleet_discovery_seconds`` (refreshed in the background near the end of that time,
so that no run waits for it) and asked for again at once when a caller saw a member fail
(:meth:`Discovery.invalidate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from ..config import SandboxConfig
from ..errors import TransportError

log = logging.getLogger(__name__)

#: DescribeInstanceInformation: MaxResults 5-50, at most 100 values per filter (SSM API reference).
SSM_PAGE, SSM_FILTER_VALUES = 50, 50
#: Values per DescribeInstances filter (EC2 API reference: up to 200 values per filter).
EC2_FILTER_VALUES = 200
#: DescribeInstanceTypes: up to 100 instance types per call (EC2 API reference).
TYPES_PER_CALL = 100
#: Past this share of ``fleet_discovery_seconds`` a cached membership is refreshed in the background.
REFRESH_AFTER = 0.8
#: Auto Scaling lifecycle states that end with the instance gone from the group (Auto Scaling user guide,
#: "Amazon EC2 Auto Scaling instance lifecycle").
LEAVING = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated", "Detaching", "Detached")


class Member(BaseModel):
    """One candidate instance and what AWS says about it."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    state: str
    instance_type: str | None = None
    vcpus: int | None = None
    #: The Auto Scaling group's LifecycleState (None when the fleet is not a group).
    lifecycle: str | None = None
    #: SSM PingStatus (None: not registered with SSM).
    ping: str | None = None
    #: Whether the member is reached through its SSM agent (an SSH/EIC fleet needs no agent).
    agent_required: bool = True

    @property
    def healthy(self) -> bool:
        agent = self.ping == "Online" or not self.agent_required
        return self.state == "running" and agent and self.lifecycle in (None, "InService")

    @property
    def gone(self) -> bool:
        """Whether the instance and its disk have left the fleet for good (its sessions' state is lost)."""
        return self.state in ("shutting-down", "terminated") or (self.lifecycle or "") in LEAVING

    def describe(self) -> str:
        parts = [self.state]
        if self.lifecycle is not None:
            parts.append(f"lifecycle {self.lifecycle}")
        if self.agent_required:
            parts.append(f"SSM agent {self.ping}" if self.ping else "not registered with SSM")
        return f"{self.instance_id} ({', '.join(parts)})"


class Membership(BaseModel):
    """The fleet as seen at ``taken_at`` (monotonic seconds)."""

    model_config = ConfigDict(frozen=True)

    members: tuple[Member, ...]
    taken_at: float

    def get(self, instance_id: str) -> Member | None:
        return next((m for m in self.members if m.instance_id == instance_id), None)

    def healthy(self) -> list[Member]:
        return [m for m in self.members if m.healthy]

    def is_gone(self, instance_id: str) -> bool:
        member = self.get(instance_id)
        return member is None or member.gone

    def summary(self) -> str:
        if not self.members:
            return "no instances"
        return "; ".join(m.describe() for m in self.members)


def source_name(config: SandboxConfig) -> str:
    """The fleet's source in words, for messages: 'Auto Scaling group web', 'instances tagged a=b'."""
    if config.fleet_auto_scaling_group is not None:
        return f"Auto Scaling group {config.fleet_auto_scaling_group!r}"
    if config.fleet_tags is not None:
        return f"instances tagged {', '.join(config.fleet_tags)}"
    return f"instances {', '.join(config.fleet_instance_ids or [])}"


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Discovery:
    """Finds the fleet's members; cached for ``config.fleet_discovery_seconds``. Safe to share."""

    def __init__(
        self,
        config: SandboxConfig,
        client: Callable[[str], Any],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self._cached: Membership | None = None
        self._vcpus: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Future[None] | None = None
        #: Answers asked of AWS so far.
        self.refreshed = 0

    def invalidate(self) -> None:
        """Ask AWS again on the next call (a member failed, or placement found no room)."""
        self._cached = None

    async def members(self, max_age: float | None = None) -> Membership:
        """The current membership, no older than ``max_age`` (default: ``fleet_discovery_seconds``).

        With the default, an answer in the last fifth of its life is still given, and a fresh one asked
        for in the background: a steady stream of calls never waits for AWS, and none is given an answer
        older than ``fleet_discovery_seconds``."""
        limit = self.config.fleet_discovery_seconds if max_age is None else max_age
        cached = self._cached
        if cached is not None and self.clock() - cached.taken_at <= limit:
            if max_age is None and self.clock() - cached.taken_at > limit * REFRESH_AFTER:
                self._refresh_soon()
            return cached
        async with self._lock:
            cached = self._cached
            if cached is not None and self.clock() - cached.taken_at <= limit:
                return cached
            return await self._refresh()

    def _refresh_soon(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return

        async def refresh() -> None:
            async with self._lock:
                try:
                    await self._refresh()
                except TransportError as exc:  # the next caller that needs an answer asks and is told
                    log.debug("fleet members: refreshing in the background failed: %s", exc)

        self._refreshing = asyncio.ensure_future(refresh())

    async def _refresh(self) -> Membership:
        try:
            found = await asyncio.to_thread(self._discover)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise TransportError(
                f"could not list the members of the fleet ({source_name(self.config)}): "
                f"{error.get('Code')}: {error.get('Message')}; the credentials need "
                "autoscaling:DescribeAutoScalingGroups, ec2:DescribeInstances, ec2:DescribeInstanceTypes "
                "and ssm:DescribeInstanceInformation"
            ) from exc
        except BotoCoreError as exc:
            raise TransportError(f"could not reach AWS to list the fleet's members: {exc}") from exc
        self._cached = Membership(members=tuple(found), taken_at=self.clock())
        self.refreshed += 1
        log.debug("fleet members: %s", self._cached.summary())
        return self._cached

    async def aclose(self) -> None:
        """Stop a background refresh still under way."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing

    # ------------------------------------------------------------------ the AWS calls (in a thread)
    def _discover(self) -> list[Member]:
        lifecycle: dict[str, str] | None = None
        if self.config.fleet_auto_scaling_group is not None:
            lifecycle = self._group_instances(self.config.fleet_auto_scaling_group)
            instances = self._describe([{"Name": "instance-id", "Values": list(lifecycle)}])
        elif self.config.fleet_tags is not None:
            filters = []
            for tag in self.config.fleet_tags:
                key, _, value = tag.partition("=")
                filters.append({"Name": f"tag:{key}", "Values": [value]})
            instances = self._describe(filters)
        else:
            instances = self._describe([{"Name": "instance-id", "Values": self.config.fleet_instance_ids}])
        types = sorted({i["InstanceType"] for i in instances if i.get("InstanceType")})
        self._learn_vcpus(types)
        running = [i["InstanceId"] for i in instances if i["State"]["Name"] == "running"]
        over_ssm = self.config.fleet_member_transport == "ssm"
        pings = self._pings(running) if over_ssm else {}
        members = []
        for inst in instances:
            iid = inst["InstanceId"]
            members.append(
                Member(
                    instance_id=iid,
                    state=inst["State"]["Name"],
                    instance_type=inst.get("InstanceType"),
                    vcpus=self._vcpus.get(inst.get("InstanceType", "")),
                    lifecycle=None if lifecycle is None else lifecycle.get(iid),
                    ping=pings.get(iid),
                    agent_required=over_ssm,
                )
            )
        return sorted(members, key=lambda m: m.instance_id)

    def _group_instances(self, name: str) -> dict[str, str]:
        reply = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        groups = reply.get("AutoScalingGroups") or []
        if not groups:
            region = self.client("autoscaling").meta.region_name
            raise TransportError(
                f"there is no Auto Scaling group {name!r} in {region}: check fleet_auto_scaling_group and "
                "region"
            )
        return {i["InstanceId"]: i["LifecycleState"] for i in groups[0].get("Instances", [])}

    def _describe(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Instances matching ``filters``; an instance-id filter is sent in slices of allowed size."""
        ids_filter = next((f for f in filters if f["Name"] == "instance-id"), None)
        if ids_filter is not None and not ids_filter["Values"]:
            return []
        slices = (
            [
                [*(f for f in filters if f is not ids_filter), {"Name": "instance-id", "Values": part}]
                for part in _chunks(list(ids_filter["Values"]), EC2_FILTER_VALUES)
            ]
            if ids_filter is not None
            else [filters]
        )
        paginator = self.client("ec2").get_paginator("describe_instances")
        found: dict[str, dict[str, Any]] = {}
        for part in slices:
            for page in paginator.paginate(Filters=part):
                for reservation in page.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        found[inst["InstanceId"]] = inst
        return list(found.values())

    def _learn_vcpus(self, types: list[str]) -> None:
        unknown = [t for t in types if t not in self._vcpus]
        for part in _chunks(unknown, TYPES_PER_CALL):
            reply = self.client("ec2").describe_instance_types(InstanceTypes=part)
            for info in reply.get("InstanceTypes", []):
                self._vcpus[info["InstanceType"]] = int(info["VCpuInfo"]["DefaultVCpus"])

    def _pings(self, instance_ids: list[str]) -> dict[str, str]:
        pings: dict[str, str] = {}
        paginator = self.client("ssm").get_paginator("describe_instance_information")
        for part in _chunks(instance_ids, SSM_FILTER_VALUES):
            pages = paginator.paginate(
                Filters=[{"Key": "InstanceIds", "Values": part}], PaginationConfig={"PageSize": SSM_PAGE}
            )
            for page in pages:
                for info in page.get("InstanceInformationList", []):
                    pings[info["InstanceId"]] = info.get("PingStatus", "")
        return pings
