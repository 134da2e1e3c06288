"""One short run over the ssm transport against the original tool's scheme, and SSM calls per run.

The SSM stand-in (moto, commands really executed here, five at a time like the agent's workers) runs as its
own process, like a remote service, and adds a delivery latency L to every command, as the real service does
between SendCommand and the agent starting the script. Measured in the same run:

* ``execute_code("print(1)")`` (target: median <= L + 150 ms);
* the baseline, which works like the original tool: two commands per run (write the code, then run it),
  each waited for with a fixed 2 s waiter. Subject and baseline alternate run by run, as often each;
* the API calls of a 1 s run and of a 60 s run (targets <= 8 and <= 25), and of every run above.

Every count comes from the stand-in's own call log (each request it served, retries included).

    uv run python benchmarks/bench_ssm.py [--runs 15] [--latency 0.2] [--long-runs 1]

Nothing leaves 127.0.0.1: fake credentials, every client pointed at the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter

from _common import REGION, CallLog, StandIn, ratio, ssm_standin, summary

CODE = "print(1)"


def calls_text(counts: list[Counter[str]]) -> str:
    totals = [sum(c.values()) for c in counts]
    ops: Counter[str] = Counter()
    for c in counts:
        ops.update(c)
    by_op = ", ".join(f"{op} {n / len(counts):.1f}" for op, n in sorted(ops.items()))
    return f"median {statistics.median(totals):.0f} (min {min(totals)}, max {max(totals)}; per run: {by_op})"


class Baseline:
    """Like the original: write the code with one command, run it with a second, a fixed 2 s waiter each."""

    def __init__(self, instance_id: str, base: str) -> None:
        import boto3

        self.ssm = boto3.client("ssm", region_name=REGION)
        self.instance_id = instance_id
        self.workdir = tempfile.mkdtemp(dir=base)

    def command(self, script: str) -> dict:
        cid = self.ssm.send_command(
            InstanceIds=[self.instance_id],
            DocumentName="AWS-RunShellScript",
            Parameters={"commands": [script]},
        )["Command"]["CommandId"]
        while True:
            time.sleep(2.0)  # the fixed waiter
            try:
                inv = self.ssm.get_command_invocation(CommandId=cid, InstanceId=self.instance_id)
            except self.ssm.exceptions.InvocationDoesNotExist:
                continue
            if inv["Status"] not in ("Pending", "InProgress", "Delayed"):
                return inv

    def once(self) -> None:
        path = os.path.join(self.workdir, "main.py")
        q = shlex.quote
        self.command(f"mkdir -p {q(self.workdir)} && printf '%s\\n' {q(CODE)} > {q(path)}")
        inv = self.command(f"cd {q(self.workdir)} && python3 main.py")
        if inv["StandardOutputContent"] != "1\n":
            raise SystemExit(f"baseline run failed: {inv}")


async def timed(log: CallLog, run) -> tuple[float, Counter[str]]:  # type: ignore[no-untyped-def]
    mark = log.mark()
    started = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - started
    return elapsed, log.since(mark)


async def measure(standin: StandIn, args: argparse.Namespace) -> int:
    from ec2_sandbox import AsyncSandbox, SandboxConfig

    config = SandboxConfig(
        transport="ssm",
        instance_id=standin.instance_id,
        region=REGION,
        base_sandbox_dir=standin.base,
        isolation=args.isolation,
    )
    baseline = Baseline(standin.instance_id, standin.base)
    samples: dict[str, list[float]] = {"ssm": [], "baseline": []}
    counts: dict[str, list[Counter[str]]] = {"ssm": [], "baseline": []}
    async with AsyncSandbox(config) as sandbox:

        async def subject(code: str = CODE, expect: str = "1\n") -> None:
            result = await sandbox.execute_code(code, timeout=120)
            if not (result.success and result.stdout == expect):
                raise SystemExit(f"run failed: {result}")

        for _ in range(2):  # warm up both: session, clients, connection pools, the runner cached there
            await subject()
        await asyncio.to_thread(baseline.once)
        for i in range(args.runs):
            order = ("ssm", "baseline") if i % 2 == 0 else ("baseline", "ssm")
            for side in order:
                run = subject if side == "ssm" else (lambda: asyncio.to_thread(baseline.once))
                elapsed, seen = await timed(standin.log, run)
                samples[side].append(elapsed)
                counts[side].append(seen)
        long_counts: dict[str, list[Counter[str]]] = {"1 s": [], "60 s": []}
        long_times: dict[str, list[float]] = {"1 s": [], "60 s": []}
        for label, seconds, n in (("1 s", 1, args.short_runs), ("60 s", 60, args.long_runs)):
            code = f"import time\ntime.sleep({seconds})\nprint(1)"
            for _ in range(n):
                elapsed, seen = await timed(standin.log, lambda code=code: subject(code))
                long_times[label].append(elapsed)
                long_counts[label].append(seen)

    L = args.latency
    target = L + 0.150
    print(f"SSM stand-in, delivery latency L = {L * 1000:.0f} ms, isolation {args.isolation}")
    print(f"ssm transport, print(1)      {summary(samples['ssm'])}")
    print(f"  API calls per run          {calls_text(counts['ssm'])}")
    print(f"baseline (2 commands, 2 s)   {summary(samples['baseline'])}")
    print(f"  API calls per run          {calls_text(counts['baseline'])}")
    print(f"  (alternating, {args.runs} runs each)")
    print(f"ratio baseline / ssm         {ratio(samples['baseline'], samples['ssm']):.1f}x faster")
    ok = statistics.median(samples["ssm"]) <= target
    print(f"target print(1) median <= L + 150 ms = {target * 1000:.0f} ms: {'PASS' if ok else 'FAIL'}")
    for label, limit in (("1 s", 8), ("60 s", 25)):
        if not long_counts[label]:
            continue
        totals = [sum(c.values()) for c in long_counts[label]]
        passed = statistics.median(totals) <= limit
        ok = ok and passed
        print(f"{label:>4} run: {summary(long_times[label], 1.0, 's')}")
        print(f"  API calls per run          {calls_text(long_counts[label])}")
        print(f"  target <= {limit}: {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="print(1) runs, each side")
    parser.add_argument("--short-runs", type=int, default=5, help="1 s runs counted")
    parser.add_argument("--long-runs", type=int, default=1, help="60 s runs counted (0: none)")
    parser.add_argument("--latency", type=float, default=0.2, help="delivery latency L in seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra delivery latency, at random")
    parser.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "none"])
    args = parser.parse_args()
    with ssm_standin(args.latency, args.jitter) as standin:
        return asyncio.run(measure(standin, args))


if __name__ == "__main__":
    sys.exit(main())
