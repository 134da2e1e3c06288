"""The syscall filter's cost: the same `print(1)` run with the filter on and off, interleaved, in one process.

    uv run python benchmarks/bench_seccomp.py [--runs 60] [--cold] [--runtime python3]

Both sandboxes share one base dir and one zygote (warm) or both start cold (--cold); the runs alternate
on/off so that the machine's drift falls on both sides. Prints the medians, the ratio of the medians and the
median of the pair-by-pair ratios with its spread (target: the filter costs at most 3% of a run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time

from ec2_sandbox import AsyncSandbox, SandboxConfig, runner

PROGRAMS = {"python3": "print(1)", "node": "console.log(1)", "bash": "echo 1", "sh": "echo 1"}


async def once(sandbox: AsyncSandbox, runtime: str) -> tuple[float, list[str]]:
    start = time.perf_counter()
    result = await sandbox.execute_code(PROGRAMS[runtime], runtime)
    elapsed = time.perf_counter() - start
    assert result.success and result.stdout == "1\n", result
    return elapsed, result.limits_enforced


def quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--cold", action="store_true", help="warm starts off on both sides")
    parser.add_argument("--runtime", default="python3", choices=sorted(PROGRAMS))
    args = parser.parse_args()
    parent = os.path.dirname(runner.default_base_dir())
    os.makedirs(parent, exist_ok=True)
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir=parent)
    os.chmod(base, 0o711)
    common = {"base_sandbox_dir": base, "warm_start": not args.cold}
    on = AsyncSandbox(SandboxConfig(syscall_filter="default", **common))
    off = AsyncSandbox(SandboxConfig(syscall_filter="none", **common))
    try:
        _, enforced = await once(on, args.runtime)
        assert "seccomp:default" in enforced, enforced
        _, enforced = await once(off, args.runtime)
        assert "seccomp:default" not in enforced, enforced
        with_filter, without = [], []
        for i in range(args.runs):
            # Alternate which side goes first, so neither always follows the other.
            order = [(on, with_filter), (off, without)] if i % 2 == 0 else [(off, without), (on, with_filter)]
            for sandbox, sink in order:
                sink.append((await once(sandbox, args.runtime))[0])
        await on.cleanup_tasks(0)
    finally:
        await on.aclose()
        await off.aclose()
        shutil.rmtree(base, ignore_errors=True)
    pairs = [a / b for a, b in zip(with_filter, without, strict=True)]
    med_on, med_off = statistics.median(with_filter), statistics.median(without)
    mode = "cold" if args.cold else "warm"
    print(f"{args.runtime} print(1), {mode}, {args.runs} runs a side, interleaved")
    print(f"filter on   median {med_on * 1000:6.2f} ms")
    print(f"filter off  median {med_off * 1000:6.2f} ms")
    print(f"RATIO of medians (target <= 1.03): {med_on / med_off:.3f}")
    print(f"pair-by-pair ratio: median {statistics.median(pairs):.3f}, quartiles {quartiles(pairs)}")


if __name__ == "__main__":
    asyncio.run(main())
