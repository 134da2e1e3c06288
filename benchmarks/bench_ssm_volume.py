"""Bytes over SSM without an output bucket: reading a task's file back, and sending a large input.

The stand-in (moto; commands really run here, five at a time like the agent's workers) runs as its own
process with a delivery latency L per command. Each size is read back with the current transport, and the
SSM API calls are counted from the stand-in's own call log. Two kinds of data: random bytes (incompressible:
the floor) and text (log lines, which compress).

    uv run python benchmarks/bench_ssm_volume.py [--latency 0.2] [--sizes 1,10] [--repeat 3]

Targets (issue 16, L = 200 ms): read 1 MB in <= 3 s and 10 MB in <= 20 s; send 1 MB of input in <= 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from _common import CallLog, ssm_standin

MAKE = {
    "random": "import os\nopen('data.bin', 'wb').write(os.urandom({n}))",
    "text": (
        "import random\nr = random.Random(1)\nout = open('data.bin', 'w')\nn = 0\n"
        "while n < {n}:\n"
        "    line = f'{{n:012d}} INFO worker={{r.randint(1, 64)}} took {{r.random():.6f}} s\\n'\n"
        "    out.write(line)\n    n += len(line)\n"
    ),
}


async def measure(instance_id: str, base: str, sizes: list[int], repeat: int, log: CallLog) -> list[str]:
    from ec2_sandbox import AsyncSandbox, SandboxConfig

    config = SandboxConfig(
        transport="ssm",
        instance_id=instance_id,
        region="us-east-1",
        base_sandbox_dir=base,
        max_file_size_mb=64,
    )
    lines = []
    async with AsyncSandbox(config) as sandbox:
        await sandbox.execute_code("print(1)")
        for mb in sizes:
            n = mb * 1_000_000
            for kind, make in MAKE.items():
                made = await sandbox.execute_code(make.format(n=n), timeout=300)
                assert made.success, made
                times, counts = [], []
                for _ in range(repeat):
                    before = log.mark()
                    started = time.perf_counter()
                    data = await sandbox.get_task_files(made.task_hash, "data.bin")
                    times.append(time.perf_counter() - started)
                    counts.append(sum(log.since(before).values()))
                    assert len(data) >= n
                lines.append(
                    f"read {mb:>3} MB {kind:<6}  median {statistics.median(times):6.2f} s "
                    f"(min {min(times):.2f}, max {max(times):.2f}, {repeat} runs), "
                    f"{statistics.median(counts):.0f} SSM calls, "
                    f"{len(data) / statistics.median(times) / 1e6:.2f} MB/s"
                )
                print(lines[-1], flush=True)
        blob = os.urandom(1_000_000)
        times, counts = [], []
        for _ in range(repeat):
            before = log.mark()
            started = time.perf_counter()
            sent = await sandbox.execute_code(
                "print(len(open('in.bin','rb').read()))", files={"in.bin": blob}
            )
            times.append(time.perf_counter() - started)
            counts.append(sum(log.since(before).values()))
            assert sent.stdout.strip() == "1000000", sent
        lines.append(
            f"send   1 MB random  median {statistics.median(times):6.2f} s (min {min(times):.2f}, "
            f"max {max(times):.2f}), {statistics.median(counts):.0f} SSM calls (the run included)"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sizes", default="1,10", help="MB to read back, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with ssm_standin(args.latency) as standin:
        print(f"delivery latency L = {args.latency * 1000:.0f} ms")
        sizes = [int(size) for size in args.sizes.split(",")]
        asyncio.run(measure(standin.instance_id, standin.base, sizes, args.repeat, standin.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
