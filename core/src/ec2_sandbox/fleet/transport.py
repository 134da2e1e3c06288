"""The ``fleet`` transport: each runner request goes to the member that holds its session or its task.

It reads three routing keys of the runner request - ``op``, ``session_id``, ``task_hash`` - and passes the
payload on unchanged to an ``ssm`` transport for the chosen member; everything below that line is the ssm
transport's. Routing:

* ``run`` with a session: the session's member (:meth:`FleetTransport._session_member`), placed on first use
  on the healthy member with the most free slots; the session holds one slot, a lease each use renews.
* ``run`` without a session: a slot on the healthy member with the most free slots, for the run's length.
* ``read``/``list``: the member the task ran on (recorded in the table).
* ``probe``: one healthy member (the runtimes' check); :meth:`FleetTransport.status_parts` adds a table of
  every member (health, slots, sessions, load, disk) from one fan-out command.
* ``inventory``/``remove`` (cleanup): every healthy member, through one multi-target command per 50 members
  (:mod:`.operations`, :mod:`.fanout`).

"The most free slots" is as this client last read the slots (at most ``fleet_discovery_seconds`` ago, read
again in the background past half that) with its own takes and releases since: every take is a conditional
write, so a view out of date costs one refused write and a fresh read, never a slot given twice. A new
session then costs one round trip to the table: the slot, the session's record and the task's record in
one transaction.

A full fleet makes a run wait up to ``fleet_wait_seconds`` (asking for the membership again, so that a
scale-out is seen) and then refuses it; an instance is never given more runs than its slots.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.config import Config

from ..aws_session import make_session
from ..config import SandboxConfig
from ..errors import ConfigError, TaskNotFoundError
from ..protocol import RunnerRefusal
from ..schema import StatusPart
from ..transports.base import LineCallback, RunnerOutput, Transport
from ..transports.ssm import SsmTransport
from . import operations, status
from .discovery import Discovery, Member, Membership, source_name
from .fanout import FanOut
from .members import MemberPool
from .store import LeaseStore, Placing, SessionRecord, SlotLease, session_holder

log = logging.getLogger(__name__)

#: Seconds a run's slot is held beyond the call's own timeout (a client that dies mid-run frees it then).
RUN_LEASE_MARGIN = 60.0
#: Seconds a member's connection may stay unused before it is closed (reopened on the next use).
IDLE_CLOSE_SECONDS = 300.0
#: While waiting for a slot, the membership is asked for at least this often (a scale-out shows up).
WAIT_DISCOVERY_SECONDS = 2.0
#: Past this share of ``fleet_discovery_seconds`` the view of the slots is read again in the background
#: when used.
SLOTS_REFRESH = 0.5
#: This client's takes and releases remembered for reads still under way.
NOTES_KEPT = 1024
#: Command durations kept over the whole fleet (a member's own estimate keeps its last 16).
FLEET_DURATIONS = 64
#: Session ids this client remembers having seen (a session not among them is read as probably new).
SEEN_SESSIONS = 4096
#: First and longest pause between looks at a full fleet (with jitter, so waiting clients spread out).
WAIT_FIRST, WAIT_MAX = 0.05, 1.0

#: botocore's adaptive retry mode: exponential backoff with jitter, and a client-side rate limiter that
#: slows this process's calls down when AWS throttles them - so that many clients of one account back off
#: together and keep going (botocore "Retries" guide). Every AWS call of a fleet goes through these clients.
RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=70)

MemberFactory = Callable[[SandboxConfig], Transport]


class _Durations(collections.deque[float]):
    """A member's recent command durations, each also added to the fleet's."""

    def __init__(self, fleet: collections.deque[float], maxlen: int | None) -> None:
        super().__init__(maxlen=maxlen)
        self.fleet = fleet

    def append(self, value: float) -> None:
        super().append(value)
        self.fleet.append(value)


class MemberSsm(SsmTransport):
    """The ssm transport for one member, on the fleet's clients: one adaptive rate limiter for all the calls
    this client makes, whichever member they are for.

    When to poll is learnt from the member's own commands; a member this client has not used yet (a new
    session's, typically) starts from what the fleet's other members took, so that its first command is
    polled when it is likely done rather than on the cold schedule."""

    def __init__(
        self,
        config: SandboxConfig,
        clients: Callable[[str], Any],
        fleet_durations: collections.deque[float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(config, **options)
        self._shared = clients
        self._fleet_durations = fleet_durations if fleet_durations is not None else collections.deque()
        self._durations = _Durations(self._fleet_durations, self._durations.maxlen)

    def client(self, service: str) -> Any:
        return self._shared(service)

    def _expected(self) -> float | None:
        own = super()._expected()
        if own is not None or not self._fleet_durations:
            return own
        ordered = sorted(self._fleet_durations)
        return ordered[len(ordered) // 4]


class FleetFull(RunnerRefusal):
    """No slot came free within ``fleet_wait_seconds``."""


class FleetTransport(Transport):
    """Runs the runner on the members of a fleet, one ssm transport per member."""

    name = "fleet"
    max_output_chars: int | None = SsmTransport.max_output_chars

    def __init__(
        self,
        config: SandboxConfig,
        *,
        member_factory: MemberFactory | None = None,
        member_options: dict[str, Any] | None = None,
        clients: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.time,
        idle_close: float = IDLE_CLOSE_SECONDS,
    ) -> None:
        if not config.is_fleet or not config.fleet_table:
            raise ConfigError(
                "the fleet transport needs a fleet: fleet_auto_scaling_group, fleet_tags or "
                "fleet_instance_ids, and fleet_table"
            )
        self.config = config
        if config.s3_bucket:
            self.max_output_chars = None
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self.client = clients or self._client
        self.discovery = Discovery(config, self.client)
        self.store = LeaseStore(self.client("dynamodb"), config.fleet_table, clock=clock)
        self.clock = clock
        options = member_options or {}
        self.over_ssm = config.fleet_member_transport == "ssm"
        if member_factory is None:
            #: Recent command durations over all members (where a member new to this client polls first).
            durations: collections.deque[float] = collections.deque(maxlen=FLEET_DURATIONS)
            member_factory = (
                (lambda c: MemberSsm(c, self.client, durations, **options))
                if self.over_ssm
                else _ssh_member(options)
            )
        self.members = MemberPool(self._member_config, member_factory, idle_close=idle_close)
        #: Fan-out through SSM's multi-target SendCommand (None: SSH/EIC members, each asked on its own).
        self.fanout = FanOut(self.client) if self.over_ssm else None
        #: Which members held each entry of the last fleet-wide inventory (where ``remove`` goes).
        self._where: dict[operations.EntryKey, set[str]] = {}
        #: Where tasks this client started ran (the table has them too, for other clients).
        self._tasks: dict[str, str] = {}
        #: Sessions this client has used, the most recent last (see :data:`SEEN_SESSIONS`), with where it
        #: last found each (None: read the record on the next use).
        self._seen: collections.OrderedDict[str, SessionRecord | None] = collections.OrderedDict()
        #: The slots as last read (monotonic time of the read; leases by member and index), and the
        #: background read under way, if any (:meth:`_slots`).
        self._slot_view: tuple[float, dict[tuple[str, int], SlotLease]] | None = None
        self._slot_read: asyncio.Future[list[SlotLease]] | None = None
        #: This client's recent takes and releases (a read that began before one does not show it).
        self._notes: list[tuple[float, SlotLease]] = []
        self._background: set[asyncio.Future[Any]] = set()

    @property
    def target(self) -> str:
        return f"fleet of {source_name(self.config)}"

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            if self._session is None:
                self._session = make_session(self.config)
            self._clients[service] = self._session.client(service, config=RETRIES)
        return self._clients[service]

    def _member_config(self, instance_id: str) -> SandboxConfig:
        update: dict[str, Any] = {"instance_id": instance_id, "transport": self.config.fleet_member_transport}
        for name in ("fleet_auto_scaling_group", "fleet_tags", "fleet_instance_ids"):
            update[name] = None
        return self.config.model_copy(update=update)

    def member(self, instance_id: str) -> Transport:
        """The transport that reaches one member (opened on demand, closed when idle)."""
        return self.members.get(instance_id)

    def capacity(self, member: Member) -> int:
        if self.config.fleet_slots_per_instance:
            return self.config.fleet_slots_per_instance
        return max(1, (member.vcpus or 1) * self.config.fleet_slots_per_vcpu)

    # ------------------------------------------------------------------ routing
    async def exec_runner(
        self, payload: bytes, *, timeout: float, on_stdout_line: LineCallback | None = None
    ) -> RunnerOutput:
        request = json.loads(payload)
        op = request.get("op")
        if op == "run":
            return await self._run(request, payload, timeout, on_stdout_line)
        if op in ("read", "list"):
            instance_id = await self._task_member(str(request.get("task_hash")))
            return await self._on(instance_id, payload, timeout, on_stdout_line)
        if op == "probe":
            healthy = (await self.discovery.members()).healthy()
            if not healthy:
                raise await self._no_member_error()
            return await self._on(healthy[0].instance_id, payload, timeout, on_stdout_line)
        if op == "inventory":
            return _envelope(await self._inventory(request, timeout))
        if op == "remove":
            return _envelope(await self._remove(request, timeout))
        raise RunnerRefusal("unsupported", f"'{op}' is not an operation a fleet can route")

    # ------------------------------------------------------------------ fleet-wide
    async def on_members(
        self, request: dict[str, Any], instance_ids: list[str], timeout: float
    ) -> dict[str, operations.MemberResult]:
        return await operations.on_members(
            request, instance_ids, timeout=timeout, fanout=self.fanout, member=self.member
        )

    async def _healthy_ids(self) -> list[str]:
        healthy = (await self.discovery.members(max_age=0)).healthy()
        if not healthy:
            raise await self._no_member_error()
        return [m.instance_id for m in healthy]

    async def _inventory(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The fleet's inventory from every healthy member; the members it could not look at (no answer,
        or not healthy: stopped, agent offline, in a warm pool) are named under ``unreached``, so that the
        cleanup says what it left alone. Members gone for good have nothing left to clean."""
        membership = await self.discovery.members(max_age=0)
        healthy = [m.instance_id for m in membership.healthy()]
        if not healthy:
            raise await self._no_member_error()
        answers = await self.on_members(request, healthy, timeout)
        failed = {i: a.error for i, a in answers.items() if a.error is not None}
        if len(failed) == len(answers):
            raise RunnerRefusal(
                "unreachable", "no member of the fleet answered the cleanup inventory: " + _named(failed)
            )
        if failed:
            log.warning("fleet cleanup: members that did not answer are left as they are: %s", _named(failed))
        inventory, self._where = operations.merge_inventories(answers, self.clock())
        for member in membership.members:
            if not member.healthy and not member.gone:
                inventory["unreached"][member.instance_id] = (
                    f"not healthy: state {member.state}, lifecycle {member.lifecycle or '-'}, "
                    f"SSM agent {member.ping or 'not registered'}"
                )
        return inventory

    async def _remove(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        wanted = list(request.get("entries") or [])
        holders = set().union(
            *(self._where.get((str(e.get("kind")), str(e.get("id"))), set()) for e in wanted)
        )
        targets = sorted(holders) if holders else await self._healthy_ids()
        answers = await self.on_members(request, targets, timeout)
        return operations.merge_removals(answers, wanted, self._where)

    async def _on(
        self, instance_id: str, payload: bytes, timeout: float, on_stdout_line: LineCallback | None
    ) -> RunnerOutput:
        try:
            return await self.member(instance_id).exec_runner(
                payload, timeout=timeout, on_stdout_line=on_stdout_line
            )
        except RunnerRefusal as exc:
            if exc.kind == "unreachable":
                self.discovery.invalidate()  # learn at once whether the member left the fleet
            raise

    async def _run(
        self, request: dict[str, Any], payload: bytes, timeout: float, on_stdout_line: LineCallback | None
    ) -> RunnerOutput:
        task_hash = str(request.get("task_hash"))
        session_id = request.get("session_id")
        idle = float(self.config.fleet_session_idle_seconds)
        for attempt in (1, 2):
            record = None
            keep = self.config.cleanup_after_hours * 3600.0
            recorded = False
            if session_id:
                record, recorded = await self._session_member(
                    str(session_id), idle + timeout, (task_hash, keep)
                )
                instance_id, holder, index = record.instance_id, session_holder(str(session_id)), record.slot
            else:
                holder = f"run#{task_hash}"
                lease = await self._take_any(holder, ttl=timeout + RUN_LEASE_MARGIN)
                assert lease is not None  # the lease alone is never "moved"
                instance_id, index = lease.instance_id, lease.index
            log.debug("fleet: task %s (session %s) on %s slot %d", task_hash, session_id, instance_id, index)
            self._tasks[task_hash] = instance_id
            if not recorded:  # a session placed now had its task recorded in the same transaction
                self._spawn(self.store.put_task, task_hash, instance_id, keep)
            try:
                return await self._on(instance_id, payload, timeout, on_stdout_line)
            except RunnerRefusal as exc:
                if exc.kind != "unreachable":
                    raise
                # The membership may be older than the member's departure: ask again before answering.
                membership = await self.discovery.members(max_age=0)
                if not membership.is_gone(instance_id):
                    raise
                if record is not None:
                    await self._lose(record, membership)  # raises: the session's state went with it
                if attempt == 2:
                    raise
                # A member that left runs nothing any more: a session-less run is placed once again.
                log.debug("fleet: %s left the fleet; placing task %s again", instance_id, task_hash)
            finally:
                if session_id:
                    # The idle clock starts now: the session keeps its slot for fleet_session_idle_seconds.
                    self._spawn(self.store.renew, instance_id, index, holder, idle)
                else:
                    self._spawn(self.store.release, instance_id, index, holder)
                    self._note(SlotLease(instance_id=instance_id, index=index, holder="", expires=0.0))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _spawn(self, func: Callable[..., Any], *args: Any) -> None:
        """A table write the result does not wait for; failures are logged (leases expire on their own)."""
        task = asyncio.ensure_future(asyncio.to_thread(func, *args))
        self._background.add(task)

        def done(fut: asyncio.Future[Any]) -> None:
            self._background.discard(fut)
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("fleet table write %s failed: %s", func.__name__, fut.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------------ sessions
    async def _session_member(
        self, session_id: str, ttl: float, task: tuple[str, float] | None = None
    ) -> tuple[SessionRecord, bool]:
        """The session's placement, its slot lease renewed; placed (again) when it has none.

        A session this client has not seen yet is most likely new: it is placed at once, the slot and the
        record in one transaction conditioned on there being no record yet, on a slot free in the client's
        view of the slots (:meth:`_slots`) - one round trip to the table when that view is fresh. Only when
        the transaction finds a record (the session was placed by another client) or the slot taken is the
        record read. A session this client has used is renewed where it last found it, and read only if that
        renewal fails. A session whose member left the fleet is marked lost and this call is refused saying
        so; the next call with the same id places it afresh.

        ``task`` (hash, seconds to keep): the task about to run, whose record a placement writes in its
        transaction. Answers the placement and whether that happened."""
        holder = session_holder(session_id)
        if session_id not in self._seen:
            self._remember(session_id, None)
            placed = await self._place_new(session_id, ttl, task)
            if placed is not None:
                return self._found(session_id, placed), task is not None
        known = self._seen.get(session_id)
        if known is not None:
            # Where this client last found the session: renewing its lease there is the check that it is
            # still there (a session placed again elsewhere, or whose lease lapsed, no longer holds that
            # slot, and is then read).
            member = (await self.discovery.members()).get(known.instance_id)
            if (
                member is not None
                and member.healthy
                and await asyncio.to_thread(self.store.renew, known.instance_id, known.slot, holder, ttl)
            ):
                return self._found(session_id, known), False
        self._remember(session_id, None)
        while True:
            membership, record = await asyncio.gather(
                self.discovery.members(), asyncio.to_thread(self.store.session, session_id)
            )
            if record is None or record.state == "lost":
                fresh = SessionRecord(
                    session_id=session_id,
                    instance_id="",
                    slot=0,
                    generation=1 if record is None else record.generation + 1,
                )
                placed = await self._place(fresh, record, ttl, task=task)
                if placed is not None:
                    return self._found(session_id, placed), task is not None
                continue  # another client placed it first: follow its placement
            member = membership.get(record.instance_id)
            if member is None or not member.healthy:
                membership = await self.discovery.members(max_age=0)
                member = membership.get(record.instance_id)
            if membership.is_gone(record.instance_id):
                await self._lose(record, membership)
            if member is None or not member.healthy:
                raise RunnerRefusal(
                    "unreachable",
                    f"session {session_id!r} lives on {member.describe() if member else record.instance_id}, "
                    "which cannot take commands now; its files are still there: retry when it is back, or "
                    "start a new session",
                )
            if await asyncio.to_thread(self.store.renew, record.instance_id, record.slot, holder, ttl):
                return self._found(session_id, record), False
            # The lease lapsed while the session was idle: take a slot on its own member again.
            moved = await self._place(record, record, ttl, only=record.instance_id, task=task)
            if moved is not None:
                return self._found(session_id, moved), task is not None

    def _remember(self, session_id: str, record: SessionRecord | None) -> None:
        """Note the session as seen by this client, with where it was last found (None: to be read)."""
        self._seen[session_id] = record
        self._seen.move_to_end(session_id)
        while len(self._seen) > SEEN_SESSIONS:
            self._seen.popitem(last=False)

    def _found(self, session_id: str, record: SessionRecord) -> SessionRecord:
        self._remember(session_id, record)
        return record

    async def _place_new(
        self, session_id: str, ttl: float, task: tuple[str, float] | None
    ) -> SessionRecord | None:
        """One attempt at placing a session nobody has placed: the placement, or None (it exists, or the
        slot tried was taken, or none looked free: the caller reads the record and goes on from there)."""
        membership, leases = await asyncio.gather(self.discovery.members(), self._slots())
        ranked = self._free_slots(membership.healthy(), leases, self.clock())
        if not ranked:
            return None
        member, free = ranked[0]
        placed = SessionRecord(
            session_id=session_id, instance_id=member.instance_id, slot=free[0], generation=1
        )
        result = await asyncio.to_thread(self.store.place_on_slot, placed, None, ttl, task)
        if result == "slot_taken":
            self._slot_view = None  # out of date: the next look reads the slots
        if result != "placed":
            return None
        holder = session_holder(session_id)
        self._note(
            SlotLease(
                instance_id=placed.instance_id, index=placed.slot, holder=holder, expires=self.clock() + ttl
            )
        )
        return placed

    async def _place(
        self,
        record: SessionRecord,
        previous: SessionRecord | None,
        ttl: float,
        *,
        only: str | None = None,
        task: tuple[str, float] | None = None,
    ) -> SessionRecord | None:
        """``record`` on a free slot (of ``only``, if given), the slot and the record written in one
        transaction conditioned on the session still being as ``previous`` left it; None when it was not
        (another client placed the session meanwhile)."""
        outcome: list[SessionRecord] = []

        def claim(instance_id: str, index: int) -> Placing:
            placed = record.model_copy(update={"instance_id": instance_id, "slot": index})
            result = self.store.place_on_slot(placed, previous, ttl, task)
            if result == "placed":
                outcome.append(placed)
            return result

        lease = await self._take_any(session_holder(record.session_id), ttl, only, claim=claim)
        return outcome[0] if lease is not None else None

    async def _lose(self, record: SessionRecord, membership: Membership) -> None:
        member = membership.get(record.instance_id)
        why = f"{member.describe()}" if member else f"{record.instance_id} (no longer a member)"
        reason = f"its instance left the fleet: {why}"
        lost = record.model_copy(update={"state": "lost", "reason": reason})
        if record.session_id in self._seen:
            self._seen[record.session_id] = None
        await asyncio.to_thread(self.store.place_session, lost, record)
        await asyncio.to_thread(
            self.store.release, record.instance_id, record.slot, session_holder(record.session_id)
        )
        self._note(SlotLease(instance_id=record.instance_id, index=record.slot, holder="", expires=0.0))
        raise RunnerRefusal(
            "session_lost",
            f"session {record.session_id!r} is gone: {reason}; its files and interpreter state went with it. "
            "Call again with the same session id to start it afresh on another member.",
        )

    # ------------------------------------------------------------------ slots
    async def _slots(self) -> list[SlotLease]:
        """The slots as this client last read them, with its own takes and releases since, if that read is
        at most ``fleet_discovery_seconds`` old (past half that, read again in the background for the next
        caller); else read now. Only where to try first is chosen from it: every take is
        conditional, and a take the view got wrong is followed by a fresh read."""
        view = self._slot_view
        if view is not None:
            age = time.monotonic() - view[0]
            if age <= self.config.fleet_discovery_seconds:
                if age > SLOTS_REFRESH * self.config.fleet_discovery_seconds and (
                    self._slot_read is None or self._slot_read.done()
                ):
                    self._slot_read = asyncio.ensure_future(self._read_slots(quiet=True))
                return list(view[1].values())
        return await self._read_slots()

    async def _read_slots(self, *, quiet: bool = False) -> list[SlotLease]:
        taken_at = time.monotonic()
        try:
            leases = await asyncio.to_thread(self.store.slots)
        except Exception as exc:
            if not quiet:
                raise
            log.debug("fleet: reading the slots in the background failed: %s", exc)
            return []
        view = {(x.instance_id, x.index): x for x in leases}
        # This client's own takes and releases since the read began may be missing from it.
        self._notes = [(at, lease) for at, lease in self._notes if at >= taken_at]
        for _, lease in self._notes:
            view[(lease.instance_id, lease.index)] = lease
        self._slot_view = (taken_at, view)
        return list(view.values())

    def _note(self, lease: SlotLease) -> None:
        """This client's own take (or, with ``expires`` 0, release) in its view of the slots."""
        if self._slot_view is not None:
            self._slot_view[1][(lease.instance_id, lease.index)] = lease
        self._notes.append((time.monotonic(), lease))
        del self._notes[:-NOTES_KEPT]

    async def _take_any(
        self,
        holder: str,
        ttl: float,
        only: str | None = None,
        *,
        claim: Callable[[str, int], Placing] | None = None,
    ) -> SlotLease | None:
        """A slot for ``holder`` on the healthy member with the most free slots (or on ``only``).

        ``claim(instance, index)`` takes a slot (default: the lease alone) and may answer 'moved': then
        this returns None. The first look is at the client's view of the slots (:meth:`_slots`); when that
        finds nothing, or the slot it chose was taken, the slots are read again. Waits up to
        ``fleet_wait_seconds`` for one to come free, looking at the membership again first at once (a
        member may have been added) and then every couple of seconds; then refuses."""

        def take(instance_id: str, index: int) -> Placing:
            return "placed" if self.store.take(instance_id, index, holder, ttl) else "slot_taken"

        claim = claim or take
        deadline = time.monotonic() + self.config.fleet_wait_seconds
        pause = WAIT_FIRST
        max_age: float | None = None
        looked_again = False
        from_view = True
        while True:
            membership = await self.discovery.members(max_age=max_age)
            healthy = [m for m in membership.healthy() if only is None or m.instance_id == only]
            if from_view:
                leases = await self._slots()
            else:
                leases = await self._read_slots() if healthy else []
            now = self.clock()
            for member, free in self._free_slots(healthy, leases, now):
                for index in free:
                    result = await asyncio.to_thread(claim, member.instance_id, index)
                    if result == "moved":
                        return None
                    if result == "placed":
                        lease = SlotLease(
                            instance_id=member.instance_id, index=index, holder=holder, expires=now + ttl
                        )
                        self._note(lease)
                        return lease
                    if from_view:
                        break  # the view was out of date: read the slots again
                else:
                    continue
                break
            if from_view:
                from_view = False
                continue
            if not looked_again:
                looked_again, max_age = True, 0.0
                continue
            max_age = WAIT_DISCOVERY_SECONDS
            left = deadline - time.monotonic()
            if left <= 0:
                raise await self._full_error(membership, leases, only)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.5)))  # noqa: S311 - jitter, not secrets
            pause = min(WAIT_MAX, pause * 2)

    def _free_slots(
        self, members: list[Member], leases: list[SlotLease], now: float
    ) -> list[tuple[Member, list[int]]]:
        """Members with free slots, the least loaded first (ties in random order), each with its free
        slot indexes in random order (so that racing clients try different ones)."""
        held: dict[str, set[int]] = {}
        for lease in leases:
            if lease.expires >= now and lease.holder:
                held.setdefault(lease.instance_id, set()).add(lease.index)
        ranked = []
        for member in members:
            free = [i for i in range(self.capacity(member)) if i not in held.get(member.instance_id, set())]
            if free:
                random.shuffle(free)
                ranked.append((member, free))
        random.shuffle(ranked)
        ranked.sort(key=lambda pair: -len(pair[1]))
        return ranked

    async def _full_error(
        self, membership: Membership, leases: list[SlotLease], only: str | None
    ) -> RunnerRefusal:
        healthy = membership.healthy()
        now = self.clock()
        live = sum(1 for lease in leases if lease.expires >= now and lease.holder)
        if only is not None:
            member = membership.get(only)
            return FleetFull(
                "fleet_full",
                f"the member {only} that holds this session has no free slot after waiting "
                f"{self.config.fleet_wait_seconds} s (fleet_wait_seconds): other sessions and runs hold all "
                f"{self.capacity(member) if member else '?'} of its slots; retry later, or start a new "
                "session, which can go to another member",
            )
        if not healthy:
            return await self._no_member_error(membership)
        total = sum(self.capacity(m) for m in healthy)
        return FleetFull(
            "fleet_full",
            f"the fleet ({source_name(self.config)}) is full: its {len(healthy)} healthy member(s) have "
            f"{total} slots and all are held by sessions and runs "
            f"({live} leases live) after waiting "
            f"{self.config.fleet_wait_seconds} s (fleet_wait_seconds); raise the group's capacity, "
            "fleet_slots_per_instance or fleet_wait_seconds, or end idle sessions sooner "
            "(fleet_session_idle_seconds)",
        )

    async def _no_member_error(self, membership: Membership | None = None) -> RunnerRefusal:
        membership = membership or await self.discovery.members(max_age=0)
        return RunnerRefusal(
            "unreachable",
            f"the fleet ({source_name(self.config)}) has no member that can take commands: "
            f"{membership.summary()}; check the group's desired capacity, the instances' state and their SSM "
            "agents",
        )

    # ------------------------------------------------------------------ tasks
    async def _task_member(self, task_hash: str) -> str:
        instance_id = self._tasks.get(task_hash) or await asyncio.to_thread(self.store.task, task_hash)
        if instance_id is None:
            raise TaskNotFoundError(
                f"task {task_hash} did not run on this fleet (or its record expired after "
                f"cleanup_after_hours): check the task hash"
            )
        membership = await self.discovery.members()
        if membership.is_gone(instance_id):
            membership = await self.discovery.members(max_age=0)
            if membership.is_gone(instance_id):
                raise TaskNotFoundError(
                    f"task {task_hash} ran on {instance_id}, which has left the fleet: its files are gone"
                )
        return instance_id

    # ------------------------------------------------------------------ status
    async def status_parts(self) -> list[StatusPart]:
        return [await status.fleet_part(self)]

    async def aclose(self) -> None:
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._slot_read is not None and not self._slot_read.done():
            self._slot_read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slot_read
        await self.discovery.aclose()
        await self.members.aclose()


def _envelope(result: dict[str, Any]) -> RunnerOutput:
    """A fleet-wide answer as the runner would print it."""
    line = json.dumps({"envelope": {"ok": True, "result": result}}, separators=(",", ":"))
    return RunnerOutput(0, line.encode() + b"\n", b"")


def _named(errors: Mapping[str, str | None]) -> str:
    return "; ".join(f"{instance_id}: {error}" for instance_id, error in sorted(errors.items()))


def _ssh_member(options: dict[str, Any]) -> MemberFactory:
    def make(config: SandboxConfig) -> Transport:
        from ..transports.eic import EICTransport

        return EICTransport(config, **options)

    return make


def create_fleet_transport(config: SandboxConfig) -> FleetTransport:
    return FleetTransport(config)
