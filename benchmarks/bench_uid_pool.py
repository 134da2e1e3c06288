"""Uid set-up after many past runs vs the first run, with the runner's own ``UidPool`` on a temp base dir.

    uv run python benchmarks/bench_uid_pool.py [--past 100000] [--runs 512]

One base dir is aged by ``--past`` real claims, one per session-less task, never released (no cleanup in
between: past the range's 65,535 uids every claim recycles the uid a finished task held longest). Then,
alternating run by run and as often each, it times a claim on the aged pool (run ``past + 1``, ``past + 2``,
...) against the first claim on a new base dir (a fresh one per sample, so every sample is a first run;
its directories are made beforehand by a claim released at once, 20 base dirs at a time and written out
before the 20 samples, so that both sides time the claim alone). Prints medians, spread and the ratio
(target: aged <= 1.2x first), and the ratio of the means: uids are recycled in batches, and the claim that
starts one pays for the claims after it, so the default takes two batches' worth of samples (``--runs``
should be a multiple of ``UidPool.RECYCLE_BATCH``), and the batches that fell in the sample are counted.

Needs root (uids are handed out by a root runner only). The claims that keep other base dirs off a uid
live in a temp dir of their own for this process (``runner.UID_CLAIMS_DIR``), so the benchmark takes no
uid from anything else on the machine. The past tasks have no work dirs: recycling one retires nothing
but its pool files, which is the part whose cost could grow with history.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time

from _common import ratio, summary

from ec2_sandbox import runner

FIRST, COUNT = runner.SANDBOX_UID_RANGE
#: First runs made at a time, before they are timed.
BLOCK = 20


def new_base(top: str) -> str:
    base = tempfile.mkdtemp(dir=top)
    for sub in (runner.RUNS, runner.TASKS, runner.LOCKS):
        os.makedirs(os.path.join(base, sub))
    os.chmod(base, 0o711)
    return base


def fresh_pool(top: str) -> runner.UidPool:
    """A pool with no past runs, its directories made (by a claim released at once)."""
    # A range of its own: the aged pool's base dir holds every claim of the runner's range.
    pool = runner.UidPool(new_base(top), FIRST + COUNT, COUNT)
    release(pool, *claim(pool)[1:])
    assert pool.table() == {}
    return pool


def release(pool: runner.UidPool, key: str, uid: int) -> None:
    """Let go of a task's uid as cleanup does, which finds it in the task's record (a run writes one)."""
    rdir = runner.record_dir(pool.base, key.partition(":")[2])
    os.mkdir(rdir, 0o700)
    with open(os.path.join(rdir, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump({"uid": uid}, fh)
    pool.release([key])


def claim(pool: runner.UidPool) -> tuple[float, str, int]:
    key = "task:" + secrets.token_hex(16)
    started = time.perf_counter()
    uid = pool.acquire(key)
    return time.perf_counter() - started, key, uid


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--past", type=int, default=100_000, help="claims made before measuring")
    parser.add_argument(
        "--runs", type=int, default=2 * runner.UidPool.RECYCLE_BATCH, help="samples, each side"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_uid_pool: needs root (uids are handed out by a root runner only)")
        return 1
    top = tempfile.mkdtemp(prefix="ec2sb-bench-uids-", dir="/tmp")
    os.chmod(top, 0o711)
    runner.UID_CLAIMS_DIR = os.path.join(top, "uid-claims")
    try:
        aged = runner.UidPool(new_base(top), FIRST, COUNT)
        started = time.perf_counter()
        for _ in range(args.past):
            aged.acquire("task:" + secrets.token_hex(16))
        print(f"aged the pool with {args.past} claims in {time.perf_counter() - started:.1f} s")
        batches = []
        recycle = aged._recycle

        def counted(*args: object) -> bool:
            started = time.perf_counter()
            try:
                return recycle(*args)
            finally:
                batches.append(time.perf_counter() - started)

        aged._recycle = counted
        samples: dict[str, list[float]] = {"aged": [], "first": []}
        for block in range(0, args.runs, BLOCK):
            # New base dirs for the block's first runs, made beforehand and written out, so that neither
            # side is timed behind the making of hundreds of dirs.
            fresh = [fresh_pool(top) for _ in range(min(BLOCK, args.runs - block))]
            os.sync()
            for i, pool in enumerate(fresh, block):
                for side in ("aged", "first") if i % 2 == 0 else ("first", "aged"):
                    elapsed, key, uid = claim(aged if side == "aged" else pool)
                    samples[side].append(elapsed)
                    if side == "first":  # released, so that the next first run finds the same uid free
                        release(pool, key, uid)
            for pool in fresh:
                shutil.rmtree(pool.base)
        print(f"uid claim after {args.past} past runs : {summary(samples['aged'], 1e6, 'us')}")
        print(f"uid claim, the first run            : {summary(samples['first'], 1e6, 'us')}")
        print(f"  (alternating, {args.runs} runs each)")
        r = ratio(samples["aged"], samples["first"])
        print(f"ratio aged / first: {r:.2f}x (target <= 1.2x) {'OK' if r <= 1.2 else 'ABOVE TARGET'}")
        # Recycling goes in batches: the claim that starts one pays for the next ones; the means show it.
        means = statistics.mean(samples["aged"]) / statistics.mean(samples["first"])
        print(f"  ratio of the means (batches of recycling included): {means:.2f}x")
        if batches:
            print(f"  recycling batches in the sample: {len(batches)}, {summary(batches)}")
        sizes = [len(entries) for _, _, entries in os.walk(aged.dir)]
        print(f"files in the aged pool: {sum(sizes)}, at most {max(sizes)} in one dir")
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
