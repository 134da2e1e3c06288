"""Latency of one short run over the ssm transport, against a baseline that polls like the original tool.

The SSM stand-in (moto, commands really executed here) runs as its own process, like a remote service, and
adds a fixed delivery latency L to every command, as the real service does between SendCommand and the agent
starting the script. Target: the median wall time of ``execute_code("print(1)")`` is at most L + 150 ms.
The baseline, measured in the same run, works like the original tool: two commands per run (write the code,
then run it), each waited for with a fixed 2 s waiter. SSM API calls are counted as the HTTP requests the
client sends (retries included).

    uv run python benchmarks/bench_ssm.py [--runs 20] [--latency 0.2] [--baseline-runs 3]

Nothing leaves 127.0.0.1: fake credentials, every client pointed at the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
REGION = "us-east-1"
CODE = "print(1)"


class CallCounter:
    """Counts the requests a botocore client sends (each retry too)."""

    def __init__(self, client) -> None:
        self.count = 0
        client.meta.events.register("before-send.ssm", self._seen)

    def _seen(self, **kwargs) -> None:
        self.count += 1


async def measure_transport(
    instance_id: str, base: str, runs: int, isolation: str
) -> tuple[list[float], list[int]]:
    from ec2_sandbox import AsyncSandbox, SandboxConfig

    config = SandboxConfig(
        transport="ssm", instance_id=instance_id, region=REGION, base_sandbox_dir=base, isolation=isolation
    )
    times: list[float] = []
    calls: list[int] = []
    async with AsyncSandbox(config) as sandbox:
        counter = CallCounter(sandbox.transport.client("ssm"))
        for _ in range(2):  # warm up: session, clients, connection pool, disk cache
            await sandbox.execute_code(CODE)
        for _ in range(runs):
            before = counter.count
            started = time.perf_counter()
            result = await sandbox.execute_code(CODE)
            times.append(time.perf_counter() - started)
            calls.append(counter.count - before)
            if not (result.success and result.stdout == "1\n"):
                raise SystemExit(f"run failed: {result}")
    return times, calls


def measure_baseline(instance_id: str, base: str, runs: int) -> tuple[list[float], list[int]]:
    """Like the original: write the code with one command, run it with a second, a fixed 2 s waiter each."""
    import boto3

    ssm = boto3.client("ssm", region_name=REGION)
    counter = CallCounter(ssm)
    workdir = tempfile.mkdtemp(dir=base)

    def command(script: str) -> dict:
        cid = ssm.send_command(
            InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Parameters={"commands": [script]}
        )["Command"]["CommandId"]
        while True:
            time.sleep(2.0)  # the fixed waiter
            try:
                inv = ssm.get_command_invocation(CommandId=cid, InstanceId=instance_id)
            except ssm.exceptions.InvocationDoesNotExist:
                continue
            if inv["Status"] not in ("Pending", "InProgress", "Delayed"):
                return inv

    times: list[float] = []
    calls: list[int] = []
    path = os.path.join(workdir, "main.py")
    for _ in range(runs):
        before = counter.count
        started = time.perf_counter()
        command(
            f"mkdir -p {shlex.quote(workdir)} && printf '%s\\n' {shlex.quote(CODE)} > {shlex.quote(path)}"
        )
        inv = command(f"cd {shlex.quote(workdir)} && python3 main.py")
        times.append(time.perf_counter() - started)
        calls.append(counter.count - before)
        if inv["StandardOutputContent"] != "1\n":
            raise SystemExit(f"baseline run failed: {inv}")
    return times, calls


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.2, help="delivery latency L in seconds")
    parser.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "none"])
    args = parser.parse_args()

    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
        os.environ.pop(key, None)
    os.environ.update(FAKE_ENV)
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ec2_sandbox.testing.ssm_standin",
            "--delivery-latency",
            str(args.latency),
            "--create-instance",
            REGION,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(server.stdout.readline())
        os.environ["AWS_ENDPOINT_URL"] = ready["url"]
        instance_id = ready["instance_id"]
        times, calls = asyncio.run(measure_transport(instance_id, base, args.runs, args.isolation))
        base_times, base_calls = measure_baseline(instance_id, base, args.baseline_runs)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(base, ignore_errors=True)

    median = statistics.median(times)
    base_median = statistics.median(base_times)
    target = args.latency + 0.150
    print(f"delivery latency L             {args.latency * 1000:.0f} ms")
    print(
        f"ssm transport, print(1)        median {median * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {len(times)} runs "
        f"(isolation {args.isolation})"
    )
    print(
        f"  SSM API calls per run        {statistics.median(calls):.0f} (min {min(calls)}, max {max(calls)})"
    )
    print(f"baseline (2 commands, 2 s waiter) median {base_median * 1000:.0f} ms over {len(base_times)} runs")
    print(f"  SSM API calls per run        {statistics.median(base_calls):.0f}")
    print(f"speed-up                       {base_median / median:.1f}x")
    verdict = "PASS" if median <= target else "FAIL"
    print(f"target median <= L + 150 ms = {target * 1000:.0f} ms: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
