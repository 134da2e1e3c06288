"""Fleet throughput at saturation with 1, 2, 4 and 8 instances, and the placement cost of a new session.

What is simulated, and why. The SSM stand-in (moto, commands really executed here) runs as its own process,
like a remote service, with eight instances. Every instance has a fixed capacity C: its agent runs C commands
at once (``--workers-limit``) and the fleet gives it C slots (``fleet_slots_per_instance``). Real members are
separate machines, so N of them do N times the work; here they all share this machine's cores (two, and
shared). If each run were CPU-bound, eight "instances" would compete for the same two cores and no scaling
could show. So each command carries a delivery latency L (the stand-in's ``--delivery-latency``: the time
between SendCommand and the agent starting the script, which on AWS is spent off the caller's machine) that
dominates the run, and the code is ``print(1)`` with isolation off: what is measured is how the fleet places
and drives runs - discovery, slot leases in DynamoDB, one ssm transport per member - not this machine's CPU.

Measured, in the same stand-in:

* **Throughput at saturation.** For N = 1, 2, 4, 8 instances, N x C clients (agents), each with its own
  session and so its own slot, run ``print(1)`` back to back for a fixed window; runs are counted from the
  stand-in's call log (one SendCommand per run once the runner is cached; the clients' own count must
  agree). The sizes are interleaved - each round runs every N once, in a rotated order - and the ratio
  against N = 1 is taken per round, then its median (goal: >= 0.8 x N).
* **Placement overhead.** The first run of a new session on a fleet of 8 (find the members, look at the
  slots, take one, write the placement) against the first run of a new session on the single-instance
  ``ssm`` transport, to the same stand-in, alternating, as often each; and the placement's calls timed
  alone (the end-to-end difference is within the runs' own spread, set by when SSM is polled). The goal
  (<= 50 ms) is judged on the larger of the two. Every API call of either path is a real HTTP round trip to
  the stand-in process: its API latency is included.

    uv run python benchmarks/bench_fleet.py [--rounds 3] [--window 20] [--capacity 2] [--latency 1.0]

Nothing leaves 127.0.0.1: fake credentials, every client pointed at the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from _common import REGION, ssm_standin, summary

SIZES = (1, 2, 4, 8)
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


async def saturate(env: dict[str, Any], size: int, capacity: int, window: float) -> tuple[float, int]:
    """Runs per second with size x capacity agents, each on its own session; and the clients' own count."""
    from ec2_sandbox import AsyncSandbox

    agents = size * capacity
    run = uuid.uuid4().hex[:8]
    async with AsyncSandbox(fleet_config(env, size, capacity)) as sandbox:
        sessions = [f"sat-{run}-{n}" for n in range(agents)]

        async def once(session: str) -> None:
            result = await sandbox.execute_code(CODE, session_id=session, timeout=120)
            if not (result.success and result.stdout == "1\n"):
                raise SystemExit(f"run failed: {result}")

        await asyncio.gather(*(once(s) for s in sessions))  # placed, runner cached on every member
        counted = 0
        stop = asyncio.Event()

        async def agent(session: str) -> None:
            nonlocal counted
            while not stop.is_set():
                await once(session)
                counted += 0 if stop.is_set() else 1

        mark = env["log"].mark()
        started = time.monotonic()
        workers = [asyncio.ensure_future(agent(s)) for s in sessions]
        await asyncio.sleep(window)
        stop.set()
        elapsed = time.monotonic() - started
        seen = env["log"].since(mark)["SendCommand"]
        await asyncio.gather(*workers)
    return seen / elapsed, counted


async def first_run(sandbox: Any) -> float:
    started = time.perf_counter()
    result = await sandbox.execute_code(CODE, session_id=f"new-{uuid.uuid4().hex}", timeout=120)
    if not result.success:
        raise SystemExit(f"run failed: {result}")
    return time.perf_counter() - started


async def placement(env: dict[str, Any], capacity: int, pairs: int) -> dict[str, list[float]]:
    from ec2_sandbox import AsyncSandbox, SandboxConfig

    single = SandboxConfig(
        transport="ssm",
        instance_id=env["ids"][0],
        region=REGION,
        base_sandbox_dir=env["base"],
        isolation="none",
    )
    samples: dict[str, list[float]] = {"fleet": [], "ssm": []}
    config = fleet_config(env, len(env["ids"]), capacity).model_copy(update={"fleet_slots_per_instance": 64})
    async with AsyncSandbox(config) as fleet, AsyncSandbox(single) as ssm:
        sides = {"fleet": fleet, "ssm": ssm}
        for side in sides.values():  # warm up: clients, runner cached, discovery, the poll estimate
            for _ in range(3):
                await first_run(side)
        for i in range(pairs):
            for name in ("fleet", "ssm") if i % 2 == 0 else ("ssm", "fleet"):
                samples[name].append(await first_run(sides[name]))
        # The placement alone: read the session's record, look at the slots, take one, write the placement.
        samples["placement"] = []
        for _ in range(pairs):
            started = time.perf_counter()
            await fleet.transport._session_member(f"place-{uuid.uuid4().hex}", ttl=60.0)  # type: ignore[attr-defined]
            samples["placement"].append(time.perf_counter() - started)
    return samples


async def measure(args: argparse.Namespace) -> int:
    with fleet_standin(args.latency, args.capacity, max(SIZES)) as env:
        rates: dict[int, list[float]] = {n: [] for n in SIZES}
        ratios: dict[int, list[float]] = {n: [] for n in SIZES}
        for r in range(args.rounds):
            order = SIZES[r % len(SIZES) :] + SIZES[: r % len(SIZES)]
            this_round: dict[int, float] = {}
            for size in order:
                rate, counted = await saturate(env, size, args.capacity, args.window)
                this_round[size] = rate
                rates[size].append(rate)
                print(
                    f"  round {r + 1}: {size} instance(s): {rate:.2f} runs/s ({counted} counted by clients)"
                )
            for size in SIZES:
                ratios[size].append(this_round[size] / this_round[1])
        samples = await placement(env, args.capacity, args.pairs)

    print(
        f"fleet stand-in: capacity {args.capacity} per instance, delivery latency "
        f"{args.latency * 1000:.0f} ms, {args.window:.0f} s windows, {args.rounds} interleaved rounds;"
        " runs counted from the call log"
    )
    ok = True
    for size in SIZES:
        rate = statistics.median(rates[size])
        ratio = statistics.median(ratios[size])
        passed = ratio >= 0.8 * size
        ok = ok and passed
        spread = f"ratios {', '.join(f'{x:.2f}' for x in ratios[size])}"
        print(
            f"{size} instance(s): median {rate:6.2f} runs/s (min {min(rates[size]):.2f}, max "
            f"{max(rates[size]):.2f}); ratio to 1 instance {ratio:.2f} ({spread}); "
            f"goal >= {0.8 * size:.1f}: {'PASS' if passed else 'FAIL'}"
        )
    overhead = statistics.median(samples["fleet"]) - statistics.median(samples["ssm"])
    print(f"new session, fleet of {max(SIZES)}   {summary(samples['fleet'])}")
    print(f"new session, ssm transport {summary(samples['ssm'])}")
    print(f"  difference of medians {overhead * 1000:.1f} ms (within the runs' own spread: SSM polling)")
    # The goal is judged on the larger of the two: the difference, and the placement's own calls timed alone.
    worst = max(overhead, statistics.median(samples["placement"]))
    print(f"placement calls alone      {summary(samples['placement'])}")
    passed = worst <= 0.050
    ok = ok and passed
    print(f"placement overhead {worst * 1000:.1f} ms (goal <= 50 ms): {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


#: The command line: flag, type, default, meaning.
OPTIONS = (
    ("--rounds", int, 3, "interleaved rounds over 1, 2, 4, 8 instances"),
    ("--window", float, 20.0, "seconds each size is measured per round"),
    ("--capacity", int, 2, "runs one instance holds at once"),
    ("--latency", float, 1.0, "delivery latency L of every command, s"),
    ("--pairs", int, 15, "new-session runs on each side"),
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for flag, kind, default, meaning in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=meaning)
    return asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
