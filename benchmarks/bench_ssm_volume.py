"""Bytes over SSM without an output bucket: reading a task's file back, and sending a large input.

The stand-in (moto; commands really run here, five at a time like the agent's workers) runs as its own
process with a delivery latency L per command. Each size is read back with the current transport, and the
SSM API calls are counted from the stand-in's own call log. Two kinds of data: random bytes (incompressible:
the floor) and text (log lines, which compress).

    uv run python benchmarks/bench_ssm_volume.py [--latency 0.2] [--sizes 1,10] [--repeat 3]

Then, with ``s3_bucket``, a task's 50 MB file read back against the S3 transfer alone, two ways: one
GetObject of the same bytes from the same (moto) S3, and a PutObject plus a GetObject (the instance's
upload and the client's download that any path through S3 makes); all three alternate and run as often.
The read PUTs its parts at once and GETs them at once; the baseline is one PutObject and one GetObject, the
faster of boto3's ways here (its transfer manager, multipart with threads, took 0.42 s up and 0.25 s down
against 0.34 s and 0.10 s on this moto). What a read leaves running (collecting SSM's answer, deleting
the keys) ends before the next sample starts, and its calls are counted with the read's: SSM calls from
the stand-in's log, S3 requests (the looks for the manifest, the part GETs, the delete) from the client.

    uv run python benchmarks/bench_ssm_volume.py [--s3-mb 50]

Targets (issue 16, L = 200 ms): read 1 MB in <= 3 s and 10 MB in <= 20 s; send 1 MB of input in <= 2 s;
with ``s3_bucket``, 50 MB in <= 2x the S3 transfer alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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


async def measure_s3(instance_id: str, base: str, mb: int, repeat: int, log: CallLog) -> None:
    """With ``s3_bucket``: a task's file read back, against the S3 transfer alone (the same bytes fetched
    with one GetObject from the same S3), alternating and as often."""
    import boto3

    from ec2_sandbox import AsyncSandbox, SandboxConfig
    from ec2_sandbox.transports.ssm import SsmTransport

    bucket = "ec2-sandbox-bench-output"
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    config = SandboxConfig(
        transport="ssm",
        instance_id=instance_id,
        region="us-east-1",
        base_sandbox_dir=base,
        max_file_size_mb=mb + 1,
        s3_bucket=bucket,
    )
    n = mb * 1_000_000
    async with AsyncSandbox(config) as sandbox:
        made = await sandbox.execute_code(MAKE["random"].format(n=n), timeout=300)
        assert made.success, made
        blob = await sandbox.get_task_files(made.task_hash, "data.bin")  # warm: runner cached, clients made
        assert isinstance(blob, bytes) and len(blob) == n
        await asyncio.to_thread(s3.put_object, Bucket=bucket, Key="alone/data.bin", Body=blob)

        s3_calls: collections.Counter[str] = collections.Counter()
        transport = sandbox.transport
        assert isinstance(transport, SsmTransport)
        transport.client("s3").meta.events.register(
            "before-call.s3", lambda model, **_: s3_calls.update([model.name])
        )

        async def through_sandbox() -> None:
            assert len(await sandbox.get_task_files(made.task_hash, "data.bin")) == n

        async def get() -> None:
            reply = await asyncio.to_thread(s3.get_object, Bucket=bucket, Key="alone/data.bin")
            assert len(await asyncio.to_thread(reply["Body"].read)) == n

        async def put_and_get() -> None:
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key="alone/put.bin", Body=blob)
            reply = await asyncio.to_thread(s3.get_object, Bucket=bucket, Key="alone/put.bin")
            assert len(await asyncio.to_thread(reply["Body"].read)) == n

        sides = {"sandbox": through_sandbox, "get": get, "put+get": put_and_get}
        times: dict[str, list[float]] = {side: [] for side in sides}
        counts, s3_counts = [], []
        for i in range(repeat):
            for side in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                before, s3_before = log.mark(), sum(s3_calls.values())
                started = time.perf_counter()
                await sides[side]()
                times[side].append(time.perf_counter() - started)
                # What the read left running (collecting SSM's answer, deleting the keys) ends before
                # the next side starts, and its calls count.
                await transport.settle()
                if side == "sandbox":
                    counts.append(sum(log.since(before).values()))
                    s3_counts.append(sum(s3_calls.values()) - s3_before)

    def spread(side: str) -> str:
        return (
            f"median {statistics.median(times[side]):5.2f} s "
            f"(min {min(times[side]):.2f}, max {max(times[side]):.2f})"
        )

    print(f"s3_bucket: read {mb} MB random, {repeat} runs each, alternating", flush=True)
    print(
        f"  get_task_files                  {spread('sandbox')}, {statistics.median(counts):.0f} SSM calls, "
        f"{statistics.median(s3_counts):.0f} S3 requests (looks for the manifest, part GETs, the delete)"
    )
    print(f"  GetObject of the same bytes     {spread('get')}")
    print(f"  PutObject + GetObject (the way the bytes must travel)  {spread('put+get')}")
    r = statistics.median(times["sandbox"]) / statistics.median(times["put+get"])
    print(f"  ratio to put+get {r:5.2f}x (target <= 2x) {'OK' if r <= 2 else 'ABOVE TARGET'}")
    r = statistics.median(times["sandbox"]) / statistics.median(times["get"])
    print(f"  ratio to get     {r:5.2f}x (for reference: a download alone, which no read can be)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sizes", default="1,10", help="MB to read back, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3-mb", type=int, default=50, help="MB read back with s3_bucket (0: skip)")
    args = parser.parse_args()
    with ssm_standin(args.latency) as standin:
        print(f"delivery latency L = {args.latency * 1000:.0f} ms")
        sizes = [int(size) for size in args.sizes.split(",") if size]
        asyncio.run(measure(standin.instance_id, standin.base, sizes, args.repeat, standin.log))
        if args.s3_mb:
            asyncio.run(measure_s3(standin.instance_id, standin.base, args.s3_mb, args.repeat, standin.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
