"""Local transport: latency and throughput against raw subprocesses, measured in the same run.

    uv run python benchmarks/bench_local.py [--runs 30] [--concurrency 50]

Prints medians and two ratios (targets: latency <= 1.5x a raw `python3 -c 'print(1)'`; throughput of 50
concurrent runs >= 0.7x that of 50 concurrent raw subprocesses). The raw baseline uses the same interpreter
the sandbox resolves, so the ratio measures the sandbox's own cost. Both sides alternate to share the noise.

A run creates a handful of files and directories (its work dir, its record, its captured output), so the
filesystem under the base dir counts: by default the base dir is a fresh directory beside the one the
sandbox uses when none is configured (root: /var/lib); --base-parent puts it elsewhere, e.g. on tmpfs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from ec2_sandbox import AsyncSandbox, SandboxConfig, runner

PYTHON = shutil.which("python3", path=runner.SYSTEM_PATH) or "python3"


def raw_once() -> float:
    start = time.perf_counter()
    subprocess.run([PYTHON, "-c", "print(1)"], capture_output=True, check=True)
    return time.perf_counter() - start


async def sandbox_once(sandbox: AsyncSandbox) -> float:
    start = time.perf_counter()
    result = await sandbox.execute_code("print(1)")
    elapsed = time.perf_counter() - start
    assert result.success and result.stdout == "1\n", result
    return elapsed


async def raw_concurrent(n: int) -> float:
    start = time.perf_counter()

    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-c", "print(1)", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await proc.communicate()

    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start


async def sandbox_concurrent(sandbox: AsyncSandbox, n: int) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(sandbox.execute_code("print(1)") for _ in range(n)))
    assert all(r.success for r in results)
    return time.perf_counter() - start


def filesystem(path: str) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts (longest matching mount point)."""
    best, kind = "", "unknown"
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            mount = fields[1]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "none"])
    parser.add_argument("--cold", action="store_true", help="turn warm starts off (every run starts python3)")
    parser.add_argument(
        "--base-parent",
        default=os.path.dirname(runner.default_base_dir()),
        help="directory the benchmark's base dir is made in (default: beside the default base dir)",
    )
    args = parser.parse_args()
    os.makedirs(args.base_parent, exist_ok=True)
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir=args.base_parent)
    os.chmod(base, 0o711)
    config = SandboxConfig(base_sandbox_dir=base, isolation=args.isolation, warm_start=not args.cold)
    async with AsyncSandbox(config) as sandbox:
        await sandbox_once(sandbox)  # warm caches (bwrap probe, imports)
        raw_once()
        raw, boxed = [], []
        for _ in range(args.runs):
            raw.append(raw_once())
            boxed.append(await sandbox_once(sandbox))
        raw_tp, boxed_tp = [], []
        for _ in range(args.rounds):
            raw_tp.append(await raw_concurrent(args.concurrency))
            boxed_tp.append(await sandbox_concurrent(sandbox, args.concurrency))
        isolation = (await sandbox.execute_code("print(1)")).isolation
        await sandbox.cleanup_tasks(0)
    shutil.rmtree(base, ignore_errors=True)
    raw_med, box_med = statistics.median(raw), statistics.median(boxed)
    raw_t, box_t = statistics.median(raw_tp), statistics.median(boxed_tp)
    print(f"isolation in force: {isolation}; interpreter: {PYTHON}; warm starts: {config.warm_start}")
    print(f"base dir in {args.base_parent} ({filesystem(args.base_parent)})")
    print(f"latency  raw subprocess  median {raw_med * 1000:7.1f} ms   ({args.runs} runs)")
    print(f"latency  execute_code    median {box_med * 1000:7.1f} ms")
    print(f"LATENCY RATIO (target <= 1.5): {box_med / raw_med:.2f}")
    n = args.concurrency
    print(f"throughput raw      {n / raw_t:7.1f} runs/s   ({n} concurrent, median of {args.rounds})")
    print(f"throughput sandbox  {n / box_t:7.1f} runs/s")
    print(f"THROUGHPUT RATIO (target >= 0.7): {(n / box_t) / (n / raw_t):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
