"""Local transport, large inputs and outputs, against the same work done directly, in the same run.

    uv run python benchmarks/bench_local_bytes.py [--runs 21] [--input-mb 20] [--output-mb 50]

Input: ``execute_code`` with a 20 MB file (bytes in memory) that the program reads and hashes, against
the same work done directly: the same bytes written to a file in a new dir, then the same program run there
(``python3 -c``) (target: <= 1.5x). Both sides start from bytes in memory and end with the file on disk and
the program's answer. For reference it also prints the ratio to the program alone on a file already written
(and in the page cache), which leaves out writing the input, a cost no way of running the program avoids.
Output: reading a task's 50 MB file back with ``get_task_files`` (target: >= 200 MB/s), against reading the
same file directly. The sides alternate run by run and run as often; medians and spread are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time

from _common import ratio, summary

from ec2_sandbox import AsyncSandbox, SandboxConfig, runner

PYTHON = shutil.which("python3", path=runner.SYSTEM_PATH) or "python3"
HASH = "import hashlib\nprint(hashlib.sha256(open('in.bin', 'rb').read()).hexdigest())"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--input-mb", type=int, default=20)
    parser.add_argument("--output-mb", type=int, default=50)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ec2sb-bench-bytes-", dir="/tmp")
    os.chmod(base, 0o711)
    direct_dir = tempfile.mkdtemp(prefix="ec2sb-bench-direct-", dir="/tmp")
    blob = os.urandom(args.input_mb * 1_000_000)
    with open(os.path.join(direct_dir, "in.bin"), "wb") as fh:
        fh.write(blob)
    config = SandboxConfig(base_sandbox_dir=base, max_file_size_mb=max(64, args.output_mb + 1))
    samples: dict[str, list[float]] = {
        "input": [],
        "input direct": [],
        "program only": [],
        "output": [],
        "output direct": [],
    }
    try:
        async with AsyncSandbox(config) as sandbox:
            made = await sandbox.execute_code(
                f"import os\nopen('out.bin', 'wb').write(os.urandom({args.output_mb * 1_000_000}))"
            )
            assert made.success, made
            out_path = os.path.join(base, runner.TASKS, made.task_hash, "out.bin")

            async def send() -> None:
                result = await sandbox.execute_code(HASH, files={"in.bin": blob})
                assert result.success and len(result.stdout.strip()) == 64, result

            async def send_direct() -> None:
                where = tempfile.mkdtemp(dir=direct_dir)
                with open(os.path.join(where, "in.bin"), "wb") as fh:
                    fh.write(blob)
                subprocess.run([PYTHON, "-c", HASH], cwd=where, check=True, capture_output=True)

            async def program_only() -> None:
                subprocess.run([PYTHON, "-c", HASH], cwd=direct_dir, check=True, capture_output=True)

            async def read() -> None:
                data = await sandbox.get_task_files(made.task_hash, "out.bin")
                assert len(data) == args.output_mb * 1_000_000

            async def read_direct() -> None:
                with open(out_path, "rb") as fh:
                    assert len(fh.read()) == args.output_mb * 1_000_000

            sides = {
                "input": send,
                "input direct": send_direct,
                "program only": program_only,
                "output": read,
                "output direct": read_direct,
            }
            for side in sides.values():  # warm: page cache, zygote
                await side()
            for i in range(args.runs):
                for group in (("input", "input direct", "program only"), ("output", "output direct")):
                    for name in group if i % 2 == 0 else group[::-1]:
                        started = time.perf_counter()
                        await sides[name]()
                        samples[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(direct_dir, ignore_errors=True)
    mb_out = args.output_mb * 1_000_000 / 1e6
    print(f"{args.input_mb} MB input, program hashes it ({args.runs} runs each, alternating)")
    print(f"  execute_code with the file : {summary(samples['input'])}")
    print(f"  directly: file written, run : {summary(samples['input direct'])}")
    print(f"  the program alone (file in place): {summary(samples['program only'])}")
    r = ratio(samples["input"], samples["input direct"])
    print(f"  ratio: {r:.2f}x (target <= 1.5x) {'OK' if r <= 1.5 else 'ABOVE TARGET'}")
    alone = ratio(samples["input"], samples["program only"])
    print(f"  (ratio to the program alone, input not written: {alone:.2f}x)")
    print(f"{args.output_mb} MB output read back")
    print(f"  get_task_files             : {summary(samples['output'])}")
    print(f"  the same file, directly    : {summary(samples['output direct'])}")
    rates = sorted(mb_out / t for t in samples["output"])
    rate = mb_out / sorted(samples["output"])[len(rates) // 2]
    print(
        f"  get_task_files: {rate:.0f} MB/s (min {rates[0]:.0f}, max {rates[-1]:.0f}) (target >= 200 MB/s) "
        f"{'OK' if rate >= 200 else 'BELOW TARGET'}; "
        f"{ratio(samples['output'], samples['output direct']):.1f}x the direct read"
    )


if __name__ == "__main__":
    asyncio.run(main())
