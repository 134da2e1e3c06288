"""The per-run cost of isolation: local `print(1)` with bubblewrap vs with isolation "none", same run.

    uv run python benchmarks/bench_isolation.py [--runs 40] [--session]

Like for like: a warm start (a run forked from a running interpreter) exists only under bubblewrap, so the
isolation ratio compares both sides cold (every run starts python3; target: bubblewrap <= 1.3x none). A
third series, bubblewrap with warm starts, is reported against bubblewrap cold: what warm starts save, not
a cost of isolation. All series share one base dir, alternate run by run in a rotating order and run as
often each, so they share the machine's noise; each prints its median and spread (min, p90, max). Run it
as root to measure what production does (per-session uid, private network namespace for "none"); as
another user the runner skips those. ``--session`` runs every call in one session (the work dir is reused)
instead of a fresh task dir per run.
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


async def once(sandbox: AsyncSandbox, session: str | None) -> tuple[float, list[str]]:
    start = time.perf_counter()
    result = await sandbox.execute_code("print(1)", session_id=session)
    elapsed = time.perf_counter() - start
    assert result.success and result.stdout == "1\n", result
    return elapsed, result.limits_enforced


def describe(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return (
        f"{name:>10}: median {statistics.median(samples) * 1000:7.2f} ms   (min {ordered[0] * 1000:.2f}, "
        f"p90 {p90 * 1000:.2f}, max {ordered[-1] * 1000:.2f}, n={len(samples)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--session", action="store_true", help="reuse one session's work dir")
    args = parser.parse_args()
    if runner.find_bwrap() is None:
        raise SystemExit("bubblewrap is not installed: nothing to compare (apt-get install bubblewrap)")
    base = tempfile.mkdtemp(prefix="ec2sb-bench-iso-", dir="/tmp")
    os.chmod(base, 0o711)
    try:
        kinds = {"bwrap": ("bwrap", False), "none": ("none", False), "bwrap warm": ("bwrap", True)}
        boxes = {
            name: AsyncSandbox(SandboxConfig(base_sandbox_dir=base, isolation=iso, warm_start=warm))
            for name, (iso, warm) in kinds.items()
        }
        sessions = {name: f"bench-{name.replace(' ', '-')}" if args.session else None for name in boxes}
        samples: dict[str, list[float]] = {iso: [] for iso in boxes}
        layers: dict[str, list[str]] = {}
        for iso, box in boxes.items():  # warm-up: bwrap probe, page cache, uid allocation
            for _ in range(3):
                _, layers[iso] = await once(box, sessions[iso])
        for i in range(args.runs):
            names = list(boxes)
            order = names[i % len(names) :] + names[: i % len(names)]
            for iso in order:
                elapsed, _ = await once(boxes[iso], sessions[iso])
                samples[iso].append(elapsed)
        print(f"local print(1), {args.runs} runs each, alternating, runner uid {os.geteuid()}")
        print("bwrap and none start cold (python3 per run); bwrap warm forks from a running interpreter")
        for iso in boxes:
            print(describe(iso, samples[iso]))
            print(f"        layers: {', '.join(layers[iso])}")
        ratio = statistics.median(samples["bwrap"]) / statistics.median(samples["none"])
        verdict = "OK" if ratio <= 1.3 else "ABOVE TARGET"
        print(f" ratio: bubblewrap / none, both cold = {ratio:.2f}x (target <= 1.3x) {verdict}")
        saved = statistics.median(samples["bwrap warm"]) / statistics.median(samples["bwrap"])
        print(f" ratio: bubblewrap warm / bubblewrap cold = {saved:.2f}x (what warm starts save)")
        for box in boxes.values():
            await box.aclose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
