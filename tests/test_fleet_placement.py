"""Placing a session: the slot, the session's record and the task's record in one transaction, on a slot the
client's view of the slots shows free; what a stale view costs (one refused attempt, then a fresh read); the
stand-in's transactions; the membership refreshed in the background; a new member's poll schedule."""

from __future__ import annotations

import collections
import io
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import test_fleet
from test_fleet import REGION, Fleet

from ec2_sandbox import SandboxConfig
from ec2_sandbox.errors import TransportError
from ec2_sandbox.fleet.discovery import Discovery, Member
from ec2_sandbox.fleet.store import PLACEMENT, SLOTS, LeaseStore, SessionRecord, slot_key
from ec2_sandbox.fleet.transport import FleetTransport, MemberSsm
from ec2_sandbox.protocol import RunnerRefusal
from ec2_sandbox.testing import ssm_fleet_standin, ssm_standin

# The stand-in server and a fresh fleet per test, as test_fleet makes them.
server, make_fleet = test_fleet.server, test_fleet.make_fleet

needs_standin = pytest.mark.skipif(
    ssm_fleet_standin.usable() is not None, reason=str(ssm_fleet_standin.usable())
)


@pytest.fixture
def call_log(server: ssm_standin.Server) -> Iterator[io.StringIO]:
    """The stand-in's call log, kept in memory for one test."""
    log = io.StringIO()
    server.standin.call_log = log
    yield log
    server.standin.call_log = None


def operations(log: io.StringIO, since: int = 0) -> list[str]:
    """The operations logged after the first ``since`` lines."""
    return [line.split()[1] for line in log.getvalue().splitlines()[since:] if line.strip()]


def table_ops(log: io.StringIO, since: int = 0) -> collections.Counter[str]:
    table = {"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "TransactWriteItems"}
    return collections.Counter(op for op in operations(log, since) if op in table)


def transport(fleet: Fleet, **changes: Any) -> FleetTransport:
    return FleetTransport(fleet.config(**changes), member_options=test_fleet.FAST_POLLS)


def record_of(fleet: Fleet, session_id: str) -> dict[str, Any] | None:
    reply = fleet.ddb.get_item(
        TableName=fleet.table,
        Key={"pk": {"S": f"session#{session_id}"}, "sk": {"S": PLACEMENT}},
        ConsistentRead=True,
    )
    return reply.get("Item")


def held_slots(fleet: Fleet) -> dict[str, str]:
    """Slot key -> holder, for every slot item in the table."""
    items = fleet.ddb.query(
        TableName=fleet.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": SLOTS}},
        ConsistentRead=True,
    )["Items"]
    return {i["sk"]["S"]: i["holder"]["S"] for i in items}


# ---------------------------------------------------------------------- one transaction per new session


@needs_standin
async def test_a_new_session_is_one_transaction_when_the_view_of_the_slots_is_fresh(
    make_fleet: Any, call_log: io.StringIO
) -> None:
    fleet = make_fleet(2)
    fleet_transport = transport(fleet)
    try:
        first, recorded = await fleet_transport._session_member("first", 60.0, ("task-one", 3600.0))
        # The client's first placement reads the slots (it has no view yet) and then writes once.
        assert recorded and table_ops(call_log) == {"Query": 1, "TransactWriteItems": 1}
        mark = len(call_log.getvalue().splitlines())
        second, recorded = await fleet_transport._session_member("second", 60.0, ("task-two", 3600.0))
        assert recorded and table_ops(call_log, mark) == {"TransactWriteItems": 1}
    finally:
        await fleet_transport.aclose()
    # What the one write wrote: the slot, the session's record, the task's record.
    assert first.instance_id != second.instance_id  # the least loaded member, as seen in the view
    for session, task in ((first, "task-one"), (second, "task-two")):
        item = record_of(fleet, session.session_id)
        assert item is not None and item["instance"]["S"] == session.instance_id
        assert (
            held_slots(fleet)[slot_key(session.instance_id, session.slot)] == f"session#{session.session_id}"
        )
        assert LeaseStore(fleet.ddb, fleet.table).task(task) == session.instance_id


@needs_standin
async def test_a_session_placed_by_another_client_is_read_and_renewed_not_placed_again(
    make_fleet: Any, call_log: io.StringIO
) -> None:
    fleet = make_fleet(2)
    one, two = transport(fleet), transport(fleet)
    try:
        placed, _ = await one._session_member("shared", 60.0)
        mark = len(call_log.getvalue().splitlines())
        followed, recorded = await two._session_member("shared", 60.0, ("task-x", 3600.0))
        # The attempt to place it as new was refused (the record exists); then it was read and renewed.
        assert table_ops(call_log, mark) == {
            "Query": 1,
            "TransactWriteItems": 1,
            "GetItem": 1,
            "UpdateItem": 1,
        }
        mark = len(call_log.getvalue().splitlines())
        again, _ = await two._session_member("shared", 60.0)
        assert table_ops(call_log, mark) == {"UpdateItem": 1}  # known: renewed where it was found
    finally:
        await one.aclose()
        await two.aclose()
    assert followed == placed == again and not recorded
    assert list(held_slots(fleet).values()) == ["session#shared"]  # no slot was taken by the attempt


@needs_standin
async def test_a_stale_view_costs_one_refused_attempt_then_the_slots_are_read_again(
    make_fleet: Any, call_log: io.StringIO
) -> None:
    fleet = make_fleet(1)
    stale, other = transport(fleet, fleet_slots_per_instance=2), transport(fleet, fleet_slots_per_instance=2)
    try:
        await stale._session_member("a1", 60.0)  # its view: one of the two slots free
        taken, _ = await other._session_member("b1", 60.0)  # ... which this client now holds
        mark = len(call_log.getvalue().splitlines())
        with pytest.raises(RunnerRefusal, match="is full"):
            await stale._session_member("a2", 60.0)
        ops = table_ops(call_log, mark)
        assert ops["TransactWriteItems"] == 1 and ops["Query"] >= 1, ops  # one attempt, then fresh reads
        assert record_of(fleet, "a2") is None
        # The positive control: once the other client's slot is free, the same client places at once.
        LeaseStore(fleet.ddb, fleet.table).release(taken.instance_id, taken.slot, "session#b1")
        placed, _ = await stale._session_member("a3", 60.0)
    finally:
        await stale.aclose()
        await other.aclose()
    assert placed.slot == taken.slot


@needs_standin
async def test_a_known_session_placed_again_elsewhere_is_read_when_its_old_slot_does_not_renew(
    make_fleet: Any, call_log: io.StringIO
) -> None:
    fleet = make_fleet(2)
    client = transport(fleet)
    store = LeaseStore(fleet.ddb, fleet.table)
    try:
        first, _ = await client._session_member("s", 60.0)
        mark = len(call_log.getvalue().splitlines())
        assert (await client._session_member("s", 60.0))[0] == first  # the control: renewed in place
        assert table_ops(call_log, mark) == {"UpdateItem": 1}
        # Another client places it again, on the other member (as after a loss): the old slot is released.
        (other,) = set(fleet.members()) - {first.instance_id}
        elsewhere = SessionRecord(session_id="s", instance_id=other, slot=2, generation=2)
        store.release(first.instance_id, first.slot, "session#s")
        assert store.place_on_slot(elsewhere, first, 60.0) == "placed"
        mark = len(call_log.getvalue().splitlines())
        found, _ = await client._session_member("s", 60.0)
        assert table_ops(call_log, mark) == {"UpdateItem": 2, "GetItem": 1}  # failed, read, renewed
    finally:
        await client.aclose()
    assert found == elsewhere


@needs_standin
async def test_a_lapsed_lease_is_taken_again_on_the_session_s_own_member(make_fleet: Any) -> None:
    fleet = make_fleet(2)
    now = [1_000_000.0]
    config = fleet.config()
    client = FleetTransport(config, member_options=test_fleet.FAST_POLLS, clock=lambda: now[0])
    intruder = LeaseStore(fleet.ddb, fleet.table, clock=lambda: now[0])
    try:
        placed, _ = await client._session_member("idle", 60.0)
        assert not intruder.take(placed.instance_id, placed.slot, "run#x", 60.0)  # the control: held
        now[0] += 120.0  # the session sat idle past its lease
        assert intruder.take(placed.instance_id, placed.slot, "run#x", 60.0)
        again, _ = await client._session_member("idle", 60.0)
    finally:
        await client.aclose()
    assert again.instance_id == placed.instance_id and again.slot != placed.slot  # its files are there
    assert again.generation == placed.generation
    slots = held_slots(fleet)
    assert slots[slot_key(placed.instance_id, placed.slot)] == "run#x"
    assert slots[slot_key(again.instance_id, again.slot)] == "session#idle"


# ---------------------------------------------------------------------- races over the transaction


def _race(calls: list[Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@needs_standin
def test_sessions_racing_for_one_slot_exactly_one_is_placed(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    (member,) = fleet.members()
    for round_ in range(10):
        stores = [LeaseStore(boto3.client("dynamodb", region_name=REGION), fleet.table) for _ in range(4)]
        records = [
            SessionRecord(session_id=f"r{round_}-{n}", instance_id=member, slot=round_, generation=1)
            for n in range(4)
        ]
        results = _race(
            [lambda s=s, r=r: s.place_on_slot(r, None, 60.0) for s, r in zip(stores, records, strict=True)]
        )
        assert sorted(results) == ["placed", "slot_taken", "slot_taken", "slot_taken"], results
        winner = records[results.index("placed")]
        assert held_slots(fleet)[slot_key(member, round_)] == f"session#{winner.session_id}"
        placed = [r.session_id for r in records if record_of(fleet, r.session_id) is not None]
        assert placed == [winner.session_id]  # the losers wrote nothing


@needs_standin
def test_clients_racing_to_place_one_session_place_it_once_and_leak_no_slot(make_fleet: Any) -> None:
    fleet = make_fleet(1)
    (member,) = fleet.members()
    stores = [LeaseStore(boto3.client("dynamodb", region_name=REGION), fleet.table) for _ in range(4)]
    records = [SessionRecord(session_id="one", instance_id=member, slot=n, generation=1) for n in range(4)]
    results = _race(
        [lambda s=s, r=r: s.place_on_slot(r, None, 60.0) for s, r in zip(stores, records, strict=True)]
    )
    assert sorted(results) == ["moved", "moved", "moved", "placed"], results
    winner = records[results.index("placed")]
    assert held_slots(fleet) == {slot_key(member, winner.slot): "session#one"}
    item = record_of(fleet, "one")
    assert item is not None and int(item["slot"]["N"]) == winner.slot


@needs_standin
def test_standin_transaction_writes_all_or_nothing_with_reasons_in_order(server: ssm_standin.Server) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=server.url)
    from ec2_sandbox.fleet.store import create_table

    create_table(ddb, "txn-test")

    def put(pk: str, condition: str | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"TableName": "txn-test", "Item": {"pk": {"S": pk}, "sk": {"S": "x"}}}
        if condition:
            op["ConditionExpression"] = condition
        return {"Put": op}

    ddb.put_item(TableName="txn-test", Item={"pk": {"S": "exists"}, "sk": {"S": "x"}})
    with pytest.raises(ddb.exceptions.TransactionCanceledException) as caught:
        ddb.transact_write_items(
            TransactItems=[
                put("new-1", "attribute_not_exists(pk)"),
                put("exists", "attribute_not_exists(pk)"),
            ]
        )
    reasons = [r["Code"] for r in caught.value.response["CancellationReasons"]]
    assert reasons == ["None", "ConditionalCheckFailed"]
    assert "Item" not in ddb.get_item(TableName="txn-test", Key={"pk": {"S": "new-1"}, "sk": {"S": "x"}})
    # The positive control: the same transaction with conditions that hold writes both items.
    ddb.transact_write_items(
        TransactItems=[put("new-1", "attribute_not_exists(pk)"), put("new-2", "attribute_not_exists(pk)")]
    )
    for pk in ("new-1", "new-2"):
        assert "Item" in ddb.get_item(TableName="txn-test", Key={"pk": {"S": pk}, "sk": {"S": "x"}})
    with pytest.raises(ddb.exceptions.ClientError, match="ValidationException"):
        ddb.transact_write_items(TransactItems=[put("same"), put("same")])  # one item twice


# ---------------------------------------------------------------------- the membership, refreshed


class CountingDiscovery(Discovery):
    """A discovery whose AWS calls are replaced: each answer is one member, counted; ``fail`` raises."""

    def __init__(self, clock: list[float]) -> None:
        config = SandboxConfig(fleet_instance_ids=["i-0123456789abcdef0"], fleet_table="t-leases")
        super().__init__(config, lambda service: None, clock=lambda: clock[0])
        self.asked = 0
        self.fail = False

    def _discover(self) -> list[Member]:
        self.asked += 1
        if self.fail:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return [Member(instance_id="i-0123456789abcdef0", state="running", ping="Online")]


async def test_membership_near_the_end_of_its_life_is_given_and_refreshed_in_the_background() -> None:
    clock = [1000.0]
    discovery = CountingDiscovery(clock)  # fleet_discovery_seconds 10
    first = await discovery.members()
    assert discovery.asked == 1
    clock[0] += 5.0
    assert await discovery.members() is first and discovery.asked == 1  # young: no refresh
    clock[0] += 4.0  # 9 s old: given at once, and a fresh one asked for
    assert await discovery.members() is first
    assert discovery._refreshing is not None
    await discovery._refreshing
    assert discovery.asked == 2
    refreshed = await discovery.members()
    assert refreshed is not first and refreshed.taken_at == clock[0]
    # Past its life it is never given: the caller waits for a fresh answer.
    clock[0] += 11.0
    assert (await discovery.members()).taken_at == clock[0] and discovery.asked == 3
    await discovery.aclose()


async def test_a_failed_background_refresh_is_quiet_and_the_next_caller_past_the_limit_is_told() -> None:
    clock = [1000.0]
    discovery = CountingDiscovery(clock)
    first = await discovery.members()
    discovery.fail = True
    clock[0] += 9.0
    assert await discovery.members() is first  # the refresh fails in the background
    assert discovery._refreshing is not None
    await discovery._refreshing
    assert discovery.asked == 2
    clock[0] += 2.0  # now 11 s old
    with pytest.raises(TransportError, match="could not reach AWS"):
        await discovery.members()
    await discovery.aclose()


# ---------------------------------------------------------------------- a member's first poll


def test_a_member_without_history_polls_on_the_fleet_s_schedule() -> None:
    fleet_durations: collections.deque[float] = collections.deque(maxlen=64)

    def member(instance_id: str) -> MemberSsm:
        config = SandboxConfig(transport="ssm", instance_id=instance_id, region=REGION)
        return MemberSsm(config, lambda service: None, fleet_durations)

    used, new = member("i-0123456789abcdef0"), member("i-0fedcba9876543210")
    assert new._expected() is None  # the control: nothing learnt anywhere yet
    for seconds in (1.0, 1.1, 1.2, 1.3):
        used._durations.append(seconds)
    assert list(fleet_durations) == [1.0, 1.1, 1.2, 1.3]
    assert new._expected() == 1.1  # the fleet's lower quartile
    new._durations.append(2.0)
    assert new._expected() == 2.0  # its own history, once it has one
