"""Fleet throughput at saturation with 1, 2, 4 and 8 instances, and the placement cost of a new session.

What is simulated, and why. The SSM stand-in (moto, commands really executed here) runs as its own process,
like a remote service, with eight instances. Every instance has a fixed capacity C: its agent runs C commands
at once (``--workers-limit``) and the fleet gives it C slots (``fleet_slots_per_instance``). Real members are
separate machines, so N of them do N times the work; here they all share this machine's cores (two, shared
with whatever else runs), and so do the stand-in's API server (one Python process answering every call of
every client) and the clients themselves. Each command therefore carries a delivery latency L (the stand-in's
``--delivery-latency``: the time between SendCommand and the agent starting the script, which on AWS is
spent off the caller's machine), and the code is ``print(1)`` with isolation off, so that a run's time is
set by the instance's capacity and latency, as in a real fleet, and not by this machine's CPU. The local
CPU a run still costs (the runner's interpreter starting on the "instance", the API server answering, the
clients' own calls) grows with the runs per second, so at 8 instances 16 agents' worth of it competes for
the same two cores; measured at L = 2 s on this machine under other load, the time from SendCommand to the
script running grew from about 2.1 s (1 instance) to 2.25-2.5 s (8 instances), and the fleet's own calls
per run (renewing the lease, sending) from about 40 to about 90 ms. L is therefore 2 s by default (at 1 s
the same competition is twice the share of a run). No serialization was found in the fleet's run path (no
lock is held across a run's calls; discovery and the slots are read in the background; all slot leases
share one DynamoDB partition, which on AWS takes 1,000 writes a second - two renewals a run, so about 500
runs a second across every client of a fleet before it throttles). The ratio at 8 is a lower bound: the
local CPU a run costs is not zero, and its share depends on what else this machine runs.

Measured:

* **Throughput at saturation.** For N = 1, 2, 4, 8 instances, N x C clients (agents), each with its own
  session and so its own slot, run ``print(1)`` back to back for a fixed window, after two runs each
  (placed, runner cached). Members poll every 500 ms rather than on the ssm transport's learnt schedule,
  whose gap after a miss is half the time the command has run: a command that ends just after its estimate
  is then seen up to a second late (at L = 2 s; 0.5 to 1 s late in the median run measured here, at 1
  and at 8 instances alike), and how often that happens depends on how loaded this machine is - which grows
  with N. Each command's first poll comes at a random point of the first gap, so that a command is seen on
  average about half a gap (250 ms) after it ended, at every N and however long it took, in about as many
  polls as the learnt schedule makes. An agent's rate is its runs finished within the window over the time
  from the window's start to the last of them (no rounding to whole runs at the window's edges); the
  stand-in's own log must show one SendCommand for every run the clients counted. The sizes are
  interleaved - each round runs every N once, in a rotated order - and the ratio against N = 1 is taken
  per round, then its median (goal: >= 0.8 x N).
* **Placement overhead.** The first run of a new session on a fleet of 8 (take a slot and write the
  placement) against the first run of a new session on the single-instance ``ssm`` transport, to the same
  stand-in (a second one, whose delivery latency is 0.5 s: it is the same on both sides), alternating, as
  often each, after the same warm-up (every transport measured - the ``ssm`` transport and each of the
  fleet's eight member transports - has run 3 commands). Both sides poll every 50 ms with no learnt
  schedule, so where a poll happens to fall does not decide the difference. Reported: the end-to-end
  difference of medians; the time each side spends before its command reaches SSM and after its last poll,
  from the stand-in's own log (the SSM part between is the same ssm transport on both sides); the calls
  each new session made, by operation, from the same log; and the placement's own calls timed alone. The
  goal (<= 50 ms) is judged on the largest of the three times. Every API call of either path is a real HTTP
  round trip to the stand-in process: its latency (including what the API server spends answering, e.g.
  moto's DynamoDB Query, tens of milliseconds for a few dozen slots) is included, and background calls
  (the membership and the slots read again) compete for the same server.

    uv run python benchmarks/bench_fleet.py [--rounds 3] [--window 20] [--capacity 2] [--latency 2.0]
        [--pairs 30] [--placement-latency 0.5] [--part all|throughput|placement] [--sizes 1 2 4 8]

Nothing leaves 127.0.0.1: fake credentials, every client pointed at the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from _common import REGION, ssm_standin, summary

SIZES = (1, 2, 4, 8)
#: Runs each transport makes before the new-session runs are measured.
WARM_RUNS = 3
#: The new-session comparison polls every 50 ms on both sides, with no learnt schedule, so that where a
#: side's polls happen to fall (the ssm transport's adaptive schedule starts where each transport's own
#: history says and then grows its gaps to hundreds of milliseconds) neither hides nor adds tens of
#: milliseconds.
POLLS = {"poll_first": 0.05, "poll_max": 0.05}
#: At saturation, members poll about every 500 ms, from a random first poll, with no learnt schedule (see
#: the module's docstring).
SATURATION_POLLS = {"poll_first": 0.5, "poll_max": 0.5}
CODE = "print(1)"
#: Imports the fleet additions before the single-instance stand-in's entry point starts the server.
SERVER = (
    "import sys; from ec2_sandbox.testing import ssm_fleet_standin, ssm_standin; "
    "ssm_fleet_standin.install(); sys.exit(ssm_standin.main(sys.argv[1:]))"
)


@contextlib.contextmanager
def fleet_standin(latency: float, capacity: int, instances: int) -> Iterator[dict[str, Any]]:
    """The fleet stand-in in its own process (``_common.ssm_standin``), ``instances`` instances."""
    extra = ("--workers-limit", str(capacity))
    with ssm_standin(latency, program=("-c", SERVER), extra=extra) as standin:
        import boto3

        ec2 = boto3.client("ec2", region_name=REGION)
        first = ec2.describe_instances(InstanceIds=[standin.instance_id])["Reservations"][0]["Instances"][0]
        more = ec2.run_instances(
            ImageId=first["ImageId"], MinCount=instances - 1, MaxCount=instances - 1, InstanceType="t3.micro"
        )
        ids = [standin.instance_id, *(i["InstanceId"] for i in more["Instances"])]
        yield {"ids": ids, "base": standin.base, "log": standin.log}


def fleet_config(env: dict[str, Any], size: int, capacity: int) -> Any:
    """A fleet of the first ``size`` instances, on a table of its own (no leases of an earlier measure)."""
    import boto3

    from ec2_sandbox import SandboxConfig
    from ec2_sandbox.fleet.store import create_table

    table = f"bench-{uuid.uuid4().hex[:12]}"
    create_table(boto3.client("dynamodb", region_name=REGION), table)
    return SandboxConfig(
        region=REGION,
        base_sandbox_dir=env["base"],
        isolation="none",
        fleet_instance_ids=env["ids"][:size],
        fleet_table=table,
        fleet_slots_per_instance=capacity,
        fleet_wait_seconds=120,
    )


def grid_ssm() -> Any:
    """The ssm transport polling on a fixed grid (``poll_max`` apart) instead of its learnt schedule."""
    from ec2_sandbox.transports.ssm import SsmTransport

    class GridSsm(SsmTransport):
        def _expected(self) -> float | None:
            return None  # nothing learnt: the first poll after poll_first, then every poll_max

    return GridSsm


def grid_fleet(config: Any, polls: dict[str, float], *, random_phase: bool = False) -> Any:
    """A fleet transport whose members poll on a fixed grid (``poll_max`` apart); with ``random_phase``,
    each command's first poll comes at a random point of the first gap, so that on average a command is
    seen half a gap after it ended, however long it took."""
    from ec2_sandbox.fleet.transport import FleetTransport, MemberSsm

    class GridMember(MemberSsm):
        def _expected(self) -> float | None:
            return None

        async def _poll(self, command_id: str, sent: float, deadline: float) -> dict[str, Any]:
            if random_phase:  # read by the base class before its first await
                self.poll_first = random.uniform(0.05, polls["poll_max"])
            return await super()._poll(command_id, sent, deadline)

    fleet: FleetTransport = FleetTransport(
        config, member_factory=lambda c: GridMember(c, fleet.client, **polls)
    )
    return fleet


async def saturate(env: dict[str, Any], size: int, capacity: int, window: float) -> tuple[float, int, int]:
    """Runs per second with size x capacity agents, each on its own session; the runs the clients counted
    and the SendCommand calls the stand-in logged meanwhile (they must agree)."""
    from ec2_sandbox import AsyncSandbox

    agents = size * capacity
    run = uuid.uuid4().hex[:8]
    config = fleet_config(env, size, capacity)
    transport = grid_fleet(config, SATURATION_POLLS, random_phase=True)
    async with AsyncSandbox(config, transport=transport) as sandbox:
        sessions = [f"sat-{run}-{n}" for n in range(agents)]

        async def once(session: str) -> None:
            result = await sandbox.execute_code(CODE, session_id=session, timeout=120)
            if not (result.success and result.stdout == "1\n"):
                raise SystemExit(f"run failed: {result}")

        for _ in range(2):  # placed, runner cached on every member, the poll estimate learnt
            await asyncio.gather(*(once(s) for s in sessions))
        stop = asyncio.Event()
        ends: list[list[float]] = [[] for _ in sessions]

        async def agent(session: str, done: list[float]) -> None:
            while not stop.is_set():
                await once(session)
                done.append(time.monotonic())

        mark = env["log"].mark()
        started = time.monotonic()
        workers = [asyncio.ensure_future(agent(s, d)) for s, d in zip(sessions, ends, strict=True)]
        await asyncio.sleep(window)
        stop.set()
        await asyncio.gather(*workers)
        sent = env["log"].since(mark)["SendCommand"]
    # Each agent's rate is its runs finished within the window over the time they took (from the window's
    # start to the last of them): no rounding to whole runs at the window's end.
    rate = 0.0
    for done in ends:
        within = [t for t in done if t <= started + window]
        if within:
            rate += len(within) / (within[-1] - started)
    return rate, sum(len(d) for d in ends), sent


def calls_between(log: Any, start: float, end: float) -> list[tuple[float, str]]:
    """The stand-in's logged calls (unix time, operation) from ``start`` to ``end``."""
    found = []
    for line in log.lines():
        parts = line.split()
        if len(parts) >= 2 and start <= float(parts[0]) <= end:
            found.append((float(parts[0]), parts[1]))
    return found


async def first_run(sandbox: Any) -> tuple[float, float]:
    """A new session's first run: wall-clock start and end (the stand-in logs on the same clock)."""
    started = time.time()
    result = await sandbox.execute_code(CODE, session_id=f"new-{uuid.uuid4().hex}", timeout=120)
    if not result.success:
        raise SystemExit(f"run failed: {result}")
    return started, time.time()


async def placement(env: dict[str, Any], capacity: int, pairs: int) -> dict[str, Any]:
    """New sessions on a fleet of 8 and on the ssm transport, interleaved; what each run called, from the
    stand-in's log."""
    from ec2_sandbox import AsyncSandbox, SandboxConfig

    single = SandboxConfig(
        transport="ssm",
        instance_id=env["ids"][0],
        region=REGION,
        base_sandbox_dir=env["base"],
        isolation="none",
    )
    runs: dict[str, list[tuple[float, float]]] = {"fleet": [], "ssm": []}
    config = fleet_config(env, len(env["ids"]), capacity).model_copy(update={"fleet_slots_per_instance": 64})
    fleet_side = AsyncSandbox(config, transport=grid_fleet(config, POLLS))
    ssm_side = AsyncSandbox(single, transport=grid_ssm()(single, **POLLS))
    async with fleet_side as fleet, ssm_side as ssm:
        # Warm up alike: every transport that will be measured runs WARM_RUNS commands first (clients
        # made, runner cached, the poll estimate learnt). New sessions go to the least loaded member, so
        # WARM_RUNS x 8 of them reach each of the fleet's members WARM_RUNS times.
        for _ in range(WARM_RUNS * len(env["ids"])):
            await first_run(fleet)
        for _ in range(WARM_RUNS):
            await first_run(ssm)
        sides = {"fleet": fleet, "ssm": ssm}
        for i in range(pairs):
            for name in ("fleet", "ssm") if i % 2 == 0 else ("ssm", "fleet"):
                runs[name].append(await first_run(sides[name]))
                await asyncio.sleep(0.2)  # the fleet's writes after a run (renewal, task record) land
        # The placement alone: the slot, the session's record and the task's record in one transaction,
        # on a slot free in the client's view of the slots (read again in the background when old).
        alone = []
        for _ in range(pairs):
            started = time.perf_counter()
            await fleet.transport._session_member(  # type: ignore[attr-defined]
                f"place-{uuid.uuid4().hex}", 60.0, (uuid.uuid4().hex, 3600.0)
            )
            alone.append(time.perf_counter() - started)
    samples: dict[str, Any] = {"placement": alone}
    for name, spans in runs.items():
        samples[name] = [end - start for start, end in spans]
        around, calls = [], []
        middle = []
        for start, end in spans:
            seen = calls_between(env["log"], start, end)
            sends = [t for t, op in seen if op == "SendCommand"]
            polls = [t for t, op in seen if op == "GetCommandInvocation"]
            # Before the command reached SSM, and after its last poll: the time this side adds around the
            # same SSM command (delivery and polling are the ssm transport's on both sides).
            around.append((sends[0] - start) + (end - polls[-1]))
            middle.append(polls[-1] - sends[0])
            calls.append(Counter(op for _, op in seen))
        samples[f"{name} around"] = around
        samples[f"{name} middle"] = middle
        samples[f"{name} calls"] = calls
    return samples


def typical_calls(calls: list[Counter[str]]) -> str:
    """Each operation's median count per run, e.g. 'GetItem 1, Query 1, SendCommand 1'."""
    ops = sorted({op for c in calls for op in c})
    counts = {op: statistics.median(c[op] for c in calls) for op in ops}
    return ", ".join(f"{op} {counts[op]:g}" for op in ops if counts[op])


async def measure(args: argparse.Namespace) -> int:
    sizes = tuple(args.sizes) if args.part != "placement" else ()
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    ratios: dict[int, list[float]] = {n: [] for n in sizes}
    with fleet_standin(args.latency, args.capacity, max(SIZES)) as env:
        for r in range(args.rounds if sizes else 0):
            order = sizes[r % len(sizes) :] + sizes[: r % len(sizes)]
            this_round: dict[int, float] = {}
            for size in order:
                rate, counted, sent = await saturate(env, size, args.capacity, args.window)
                this_round[size] = rate
                rates[size].append(rate)
                agree = "agrees" if sent == counted else "DISAGREES"
                print(
                    f"  round {r + 1}: {size} instance(s): {rate:.2f} runs/s ({counted} runs counted by "
                    f"the clients, {sent} SendCommand in the stand-in's log: {agree})"
                )
            for size in sizes:
                ratios[size].append(this_round[size] / this_round[sizes[0]])
    samples = None
    if args.part != "throughput":
        with fleet_standin(args.placement_latency, args.capacity, max(SIZES)) as env:
            samples = await placement(env, args.capacity, args.pairs)

    ok = True
    if sizes:
        print(
            f"fleet stand-in: capacity {args.capacity} per instance, delivery latency "
            f"{args.latency * 1000:.0f} ms, {args.window:.0f} s windows, {args.rounds} interleaved rounds"
        )
        for size in sizes:
            rate = statistics.median(rates[size])
            ratio = statistics.median(ratios[size])
            goal = 0.8 * size / sizes[0]
            passed = ratio >= goal
            ok = ok and passed
            spread = f"ratios {', '.join(f'{x:.2f}' for x in ratios[size])}"
            print(
                f"{size} instance(s): median {rate:6.2f} runs/s (min {min(rates[size]):.2f}, max "
                f"{max(rates[size]):.2f}); ratio to {sizes[0]} instance(s) {ratio:.2f} ({spread}); "
                f"goal >= {goal:.1f}: {'PASS' if passed else 'FAIL'}"
            )
    if samples is not None:
        ok = report_placement(samples) and ok
    return 0 if ok else 1


def report_placement(samples: dict[str, Any]) -> bool:
    print(f"new session, fleet of {max(SIZES)}   {summary(samples['fleet'])}")
    print(f"new session, ssm transport {summary(samples['ssm'])}")
    overhead = statistics.median(samples["fleet"]) - statistics.median(samples["ssm"])
    print(f"  end to end: difference of medians {overhead * 1000:.1f} ms")
    print(
        f"  before the command reached SSM and after its last poll (stand-in's log): fleet "
        f"{summary(samples['fleet around'])}; ssm {summary(samples['ssm around'])}"
    )
    around = statistics.median(samples["fleet around"]) - statistics.median(samples["ssm around"])
    print(f"  difference of medians {around * 1000:.1f} ms")
    print(
        f"  from SendCommand to the last poll: fleet {summary(samples['fleet middle'])}; ssm "
        f"{summary(samples['ssm middle'])}"
    )
    print(f"  calls per new session, fleet: {typical_calls(samples['fleet calls'])}")
    print(f"  calls per new session, ssm:   {typical_calls(samples['ssm calls'])}")
    print(f"placement calls alone      {summary(samples['placement'])}")
    # Judged on the largest: the end-to-end difference, the difference around the same SSM command, and the
    # placement's own calls timed alone.
    worst = max(overhead, around, statistics.median(samples["placement"]))
    passed = worst <= 0.050
    print(f"placement overhead {worst * 1000:.1f} ms (goal <= 50 ms): {'PASS' if passed else 'FAIL'}")
    return passed


#: The command line: flag, type, default, meaning.
OPTIONS = (
    ("--rounds", int, 3, "interleaved rounds over 1, 2, 4, 8 instances"),
    ("--window", float, 20.0, "seconds each size is measured per round"),
    ("--capacity", int, 2, "runs one instance holds at once"),
    ("--latency", float, 2.0, "delivery latency L of every command, s"),
    ("--pairs", int, 30, "new-session runs on each side"),
    (
        "--placement-latency",
        float,
        0.5,
        "delivery latency of the new-session runs (the same on both sides), s",
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, kind, default, meaning in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=meaning)
    parser.add_argument(
        "--part", choices=("all", "throughput", "placement"), default="all", help="what to measure"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="fleet sizes (the first is the baseline)"
    )
    return asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
