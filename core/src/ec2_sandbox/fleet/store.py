"""The fleet's shared state in DynamoDB: slot leases, session placements, where each task ran.

Every change is a conditional write, so any number of clients can share a fleet with no server of ours in
between (DynamoDB developer guide, "Condition expressions": a write whose condition fails changes nothing
and raises ``ConditionalCheckFailedException``). One table, partition key ``pk`` and sort key ``sk``, both
strings:

* ``pk = "slots"``, ``sk = "<instance>#<index>"``: one of an instance's slots, held by ``holder`` until
  ``expires`` (epoch seconds). A slot whose item is missing or whose lease has expired is free. Taking one is
  a put conditioned on exactly that, so two clients racing for the last slot cannot both win. All slots
  share one partition so that one Query shows the whole fleet's load.
* ``pk = "session#<id>"``, ``sk = "placement"``: the instance a session lives on, the slot it holds, a
  ``generation`` that changes whenever the session is placed again, and whether its state was lost.
* ``pk = "task#<hash>"``, ``sk = "placement"``: the instance a task ran on (its files are there), with a
  ``ttl`` attribute for DynamoDB's expiry.

Lease times are the clients' wall clocks: clients whose clocks disagree by more than a few seconds shorten
or lengthen each other's leases by that much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

SLOTS = "slots"
PLACEMENT = "placement"
#: What :meth:`LeaseStore.place_on_slot` did.
Placing = Literal["placed", "slot_taken", "moved"]
#: A transaction's cancellation reasons that mean another client got there first.
LOST_RACE = ("ConditionalCheckFailed", "TransactionConflict")


class SlotLease(BaseModel):
    model_config = ConfigDict(frozen=True)

    instance_id: str
    index: int
    holder: str
    expires: float

    @property
    def sk(self) -> str:
        return slot_key(self.instance_id, self.index)


class SessionRecord(BaseModel):
    """Where a session lives. ``state`` 'lost': its member left the fleet; the next use places it again."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    instance_id: str
    slot: int
    generation: int
    state: Literal["placed", "lost"] = "placed"
    reason: str = ""


def slot_key(instance_id: str, index: int) -> str:
    return f"{instance_id}#{index:05d}"


def session_holder(session_id: str) -> str:
    return f"session#{session_id}"


def _conditional(call: Callable[..., Any], **kwargs: Any) -> bool:
    """Make a conditional write; False when its condition did not hold (and nothing was written)."""
    try:
        call(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


class LeaseStore:
    """Synchronous DynamoDB calls (the transport runs them in threads); ``client`` is a boto3 dynamodb one."""

    def __init__(self, client: Any, table: str, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.table = table
        self.clock = clock

    # ------------------------------------------------------------------ slots
    def slots(self) -> list[SlotLease]:
        """Every slot item, expired ones included (strongly consistent: a decision to wait rests on it)."""
        leases: list[SlotLease] = []
        paginator = self.client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": SLOTS}},
            ConsistentRead=True,
        )
        for page in pages:
            for item in page.get("Items", []):
                instance_id, _, index = item["sk"]["S"].rpartition("#")
                leases.append(
                    SlotLease(
                        instance_id=instance_id,
                        index=int(index),
                        holder=item.get("holder", {}).get("S", ""),
                        expires=float(item.get("expires", {}).get("N", "0")),
                    )
                )
        return leases

    def take(self, instance_id: str, index: int, holder: str, ttl: float) -> bool:
        """Hold a slot for ``ttl`` seconds if it is free (missing, expired) or already ``holder``'s."""
        return _conditional(self.client.put_item, **self._take(instance_id, index, holder, ttl))

    def _take(self, instance_id: str, index: int, holder: str, ttl: float) -> dict[str, Any]:
        """The conditional put that takes a slot (alone, or as part of a transaction)."""
        now = self.clock()
        return {
            "TableName": self.table,
            "Item": {
                "pk": {"S": SLOTS},
                "sk": {"S": slot_key(instance_id, index)},
                "holder": {"S": holder},
                "expires": {"N": repr(now + ttl)},
            },
            "ConditionExpression": "attribute_not_exists(pk) OR expires < :now OR holder = :me",
            "ExpressionAttributeValues": {":now": {"N": repr(now)}, ":me": {"S": holder}},
        }

    def renew(self, instance_id: str, index: int, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease to ``ttl`` seconds from now; False if the slot is no longer its."""
        now = self.clock()
        return _conditional(
            self.client.update_item,
            TableName=self.table,
            Key={"pk": {"S": SLOTS}, "sk": {"S": slot_key(instance_id, index)}},
            UpdateExpression="SET expires = :until",
            ConditionExpression="holder = :me AND expires >= :now",
            ExpressionAttributeValues={
                ":until": {"N": repr(now + ttl)},
                ":now": {"N": repr(now)},
                ":me": {"S": holder},
            },
        )

    def release(self, instance_id: str, index: int, holder: str) -> None:
        """Free a slot if ``holder`` still holds it (someone else's lease is left alone)."""
        _conditional(
            self.client.delete_item,
            TableName=self.table,
            Key={"pk": {"S": SLOTS}, "sk": {"S": slot_key(instance_id, index)}},
            ConditionExpression="holder = :me",
            ExpressionAttributeValues={":me": {"S": holder}},
        )

    # ------------------------------------------------------------------ sessions
    def session(self, session_id: str) -> SessionRecord | None:
        reply = self.client.get_item(
            TableName=self.table,
            Key={"pk": {"S": session_holder(session_id)}, "sk": {"S": PLACEMENT}},
            ConsistentRead=True,
        )
        item = reply.get("Item")
        if item is None:
            return None
        return SessionRecord(
            session_id=session_id,
            instance_id=item["instance"]["S"],
            slot=int(item["slot"]["N"]),
            generation=int(item["generation"]["N"]),
            state=item["state"]["S"],
            reason=item.get("reason", {}).get("S", ""),
        )

    def place_session(self, record: SessionRecord, previous: SessionRecord | None) -> bool:
        """Write ``record`` if the session is still as ``previous`` left it (None: not placed by anyone)."""
        return _conditional(self.client.put_item, **self._place(record, previous))

    def place_on_slot(
        self,
        record: SessionRecord,
        previous: SessionRecord | None,
        ttl: float,
        task: tuple[str, float] | None = None,
    ) -> Placing:
        """Take the slot ``record`` names for the session and write ``record``, in one transaction: both
        writes or neither ("TransactWriteItems", DynamoDB API reference). 'placed'; 'slot_taken' when the
        slot is someone else's (nothing written: try another); 'moved' when the session is no longer as
        ``previous`` left it (another client placed it: read it again). ``task`` (hash, seconds to keep):
        the record of the task about to run there, written in the same transaction."""
        holder = session_holder(record.session_id)
        items: list[dict[str, Any]] = [
            {"Put": self._take(record.instance_id, record.slot, holder, ttl)},
            {"Put": self._place(record, previous)},
        ]
        if task is not None:
            items.append({"Put": self._task(task[0], record.instance_id, task[1])})
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            # One reason per item, in order: "None" for an item that was not the cause. A conflict with
            # another client's write to the same item means the same as its condition failing.
            codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if len(codes) >= 2 and codes[1] in LOST_RACE:
                return "moved"
            if len(codes) >= 2 and codes[0] in LOST_RACE:
                return "slot_taken"
            raise  # throttled or invalid: not a race, botocore already retried what it could
        return "placed"

    def _place(self, record: SessionRecord, previous: SessionRecord | None) -> dict[str, Any]:
        """The conditional put of a session's placement (alone, or as part of a transaction)."""
        item = {
            "pk": {"S": session_holder(record.session_id)},
            "sk": {"S": PLACEMENT},
            "instance": {"S": record.instance_id},
            "slot": {"N": str(record.slot)},
            "generation": {"N": str(record.generation)},
            "state": {"S": record.state},
            "reason": {"S": record.reason},
            "updated": {"N": repr(self.clock())},
        }
        put: dict[str, Any] = {"TableName": self.table, "Item": item}
        if previous is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "generation = :g AND slot = :s AND #st = :state"
            put["ExpressionAttributeValues"] = {
                ":g": {"N": str(previous.generation)},
                ":s": {"N": str(previous.slot)},
                ":state": {"S": previous.state},
            }
            put["ExpressionAttributeNames"] = {"#st": "state"}  # 'state' is a DynamoDB reserved word
        return put

    # ------------------------------------------------------------------ tasks
    def put_task(self, task_hash: str, instance_id: str, keep_seconds: float) -> None:
        self.client.put_item(**self._task(task_hash, instance_id, keep_seconds))

    def _task(self, task_hash: str, instance_id: str, keep_seconds: float) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Item": {
                "pk": {"S": f"task#{task_hash}"},
                "sk": {"S": PLACEMENT},
                "instance": {"S": instance_id},
                "ttl": {"N": str(int(self.clock() + keep_seconds))},
            },
        }

    def task(self, task_hash: str) -> str | None:
        reply = self.client.get_item(
            TableName=self.table,
            Key={"pk": {"S": f"task#{task_hash}"}, "sk": {"S": PLACEMENT}},
            ConsistentRead=True,
        )
        item = reply.get("Item")
        return None if item is None else item["instance"]["S"]


def create_table(client: Any, table: str) -> None:
    """Create the fleet table (on-demand capacity, TTL on ``ttl``) and wait until it is ACTIVE."""
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    client.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"}
    )
