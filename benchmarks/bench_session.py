"""Stateful cells against stateless runs: local, SSH and SSM (stand-in), idle memory, a DataFrame scenario.

Each comparison is like for like and interleaved: a stateful cell ``x + 1`` in a session whose interpreter is
already up, against a warm stateless ``print(1)`` through the same sandbox (and, over SSH, the same
connection), alternating, as many of each. Targets (issue: sessions):

- local: a cell <= 0.5x a warm stateless run;
- SSH: a cell <= 1.2x a warm stateless run over the same connection;
- SSM stand-in at delivery latency L = 200 ms: a cell <= L + 150 ms, as a stateless run;
- an idle interpreter's resident memory (all processes of the session's uid), goal <= 30 MB;
- the DataFrame scenario: load a CSV of ~50 MB once, then 10 questions, against loading it for each
  question statelessly; printed as the speed-up (pandas where the target's python3 has it, else csv).

Usage: ``uv run python benchmarks/bench_session.py [--runs N] [--skip-ssh] [--skip-ssm]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import REGION, ratio, ssm_standin, summary

from ec2_sandbox import AsyncSandbox, SandboxConfig
from ec2_sandbox.session import AsyncSession

Timed = Callable[[], Awaitable[None]]


async def alternate(sides: dict[str, Timed], runs: int) -> dict[str, list[float]]:
    """Each side ``runs`` times, alternating which goes first."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(runs):
        for name in names if i % 2 == 0 else reversed(names):
            started = time.perf_counter()
            await sides[name]()
            times[name].append(time.perf_counter() - started)
    return times


def sides_for(sandbox: AsyncSandbox) -> tuple[dict[str, Timed], Timed, AsyncSession]:
    session = sandbox.session("bench-" + uuid.uuid4().hex[:8])

    async def cell() -> None:
        result = await session.run_code("x + 1")
        assert result.success and result.results[0].text == "2", result

    async def stateless() -> None:
        result = await sandbox.execute_code("print(1)")
        assert result.success and result.stdout == "1\n", result

    async def warm() -> None:
        assert (await session.run_code("x = 1")).success
        for _ in range(3):
            await cell()
            await stateless()

    return {"cell": cell, "stateless": stateless}, warm, session


async def local(args: argparse.Namespace) -> bool:
    base = tempfile.mkdtemp(prefix="ec2sb-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=base)) as sandbox:
        sides, warm, session = sides_for(sandbox)
        await warm()
        times = await alternate(sides, args.runs)
        status = await sandbox.instance_status()
        mine = [i for i in status.interpreters if i.session_id == session.id]
        rss = mine[0].memory_kb / 1024 if mine and mine[0].memory_kb is not None else None
        await session.close()
        frame = await dataframe(sandbox, args)
    r = ratio(times["cell"], times["stateless"])
    print("local (in-process transport)")
    print(f"  stateful cell x + 1        {summary(times['cell'])}")
    print(f"  warm stateless print(1)    {summary(times['stateless'])}")
    print(f"  ratio cell / stateless     {r:.2f}x   target <= 0.5: {'PASS' if r <= 0.5 else 'FAIL'}")
    if rss is not None:
        print(f"  idle interpreter RSS       {rss:.1f} MB (goal <= 30 MB): {'PASS' if rss <= 30 else 'FAIL'}")
    print(frame)
    return r <= 0.5


async def dataframe(sandbox: AsyncSandbox, args: argparse.Namespace) -> str:
    """Load once and ask 10 questions, against 10 stateless runs that each load the file."""
    session = sandbox.session("bench-df-" + uuid.uuid4().hex[:8])
    rows = args.csv_mb * 1024 * 1024 // 40
    made = await session.run_code(
        "import random\nrandom.seed(1)\n"
        "with open('data.csv', 'w') as fh:\n"
        "    fh.write('id,group,value,score\\n')\n"
        f"    for i in range({rows}):\n"
        "        fh.write('%d,g%d,%.6f,%d\\n' % (i, i % 50, random.random() * 1000, i % 997))\n"
        "import os\nos.path.getsize('data.csv')",
        timeout=300,
    )
    assert made.success, made
    size_mb = int(made.results[0].text or 0) / 2**20
    probe = await session.run_code("import importlib.util\nimportlib.util.find_spec('pandas') is not None")
    pandas = probe.results[0].text == "True"
    if pandas:
        load = "import pandas as pd\ndf = pd.read_csv('data.csv')"
        questions = [f"df[df.group == 'g{i}'].value.mean()" for i in range(10)]
    else:
        load = "import csv\nrows = list(csv.DictReader(open('data.csv')))"
        questions = [
            f"sum(float(r['value']) for r in rows if r['group'] == 'g{i}') / "
            f"sum(1 for r in rows if r['group'] == 'g{i}')"
            for i in range(10)
        ]
    await session.restart()
    started = time.perf_counter()
    assert (await session.run_code(load, timeout=300)).success
    for q in questions:
        assert (await session.run_code(q, timeout=300)).success
    stateful = time.perf_counter() - started
    started = time.perf_counter()
    for q in questions:
        result = await sandbox.execute_code(f"{load}\nprint({q})", session_id=session.id, timeout=300)
        assert result.success, result
    stateless = time.perf_counter() - started
    await session.close()
    kind = "pandas" if pandas else "csv (no pandas on the target)"
    return (
        f"  DataFrame scenario ({kind}, {size_mb:.0f} MB CSV, load + 10 questions)\n"
        f"    stateful {stateful:.2f} s, stateless {stateless:.2f} s: {stateless / stateful:.1f}x faster"
    )


async def ssh(args: argparse.Namespace) -> bool:
    from bench_ssh import bench_config, neutral_sshd
    from support.sshd import sshd_available

    reason = sshd_available()
    if reason:
        print(f"ssh: skipped ({reason})")
        return True
    with neutral_sshd() as server:
        config = bench_config(server)
        async with AsyncSandbox(config) as sandbox:
            sides, warm, session = sides_for(sandbox)
            await warm()
            times = await alternate(sides, args.runs)
            await session.close()
    r = ratio(times["cell"], times["stateless"])
    print("ssh (private sshd on 127.0.0.1, one connection)")
    print(f"  stateful cell x + 1        {summary(times['cell'])}")
    print(f"  warm stateless print(1)    {summary(times['stateless'])}")
    print(f"  ratio cell / stateless     {r:.2f}x   target <= 1.2: {'PASS' if r <= 1.2 else 'FAIL'}")
    return r <= 1.2


async def ssm(args: argparse.Namespace) -> bool:
    with ssm_standin(args.latency) as standin:
        config = SandboxConfig(
            transport="ssm", instance_id=standin.instance_id, region=REGION, base_sandbox_dir=standin.base
        )
        async with AsyncSandbox(config) as sandbox:
            sides, warm, session = sides_for(sandbox)
            await warm()
            runs = max(5, args.runs // 3)
            marks = standin.log.mark()
            times = await alternate(sides, runs)
            calls = sum(standin.log.since(marks).values()) / (2 * runs)
            await session.close()
    target = args.latency + 0.150
    median = statistics.median(times["cell"])
    print(f"ssm (stand-in, delivery latency L = {args.latency * 1000:.0f} ms)")
    print(f"  stateful cell x + 1        {summary(times['cell'])}")
    print(f"  warm stateless print(1)    {summary(times['stateless'])}")
    print(f"  API calls per call         {calls:.1f} (from the stand-in's log)")
    print(f"  cell median <= L + 150 ms = {target * 1000:.0f} ms: {'PASS' if median <= target else 'FAIL'}")
    return median <= target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="runs of each side (SSM: a third, at least 5)")
    parser.add_argument("--latency", type=float, default=0.2, help="SSM delivery latency L in seconds")
    parser.add_argument("--csv-mb", type=int, default=50, help="size of the DataFrame scenario's CSV")
    parser.add_argument("--skip-ssh", action="store_true")
    parser.add_argument("--skip-ssm", action="store_true")
    args = parser.parse_args()
    ok = asyncio.run(local(args))
    if not args.skip_ssh:
        ok = asyncio.run(ssh(args)) and ok
    if not args.skip_ssm:
        ok = asyncio.run(ssm(args)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
