"""A walk through ec2-sandbox on this machine - no AWS account needed.

    uv run python demo.py                 # local sandbox (the default)
    uv run python demo.py -E production   # any environment from config.json or a preset

Hello world, input files, environment variables, fetching the files a run produced, a session that keeps
state, and a run killed by its timeout.
"""

from __future__ import annotations

import argparse
import logging

from ec2_sandbox import Sandbox


def section(title: str) -> None:
    print(f"\n=== {title} ===")


def main() -> None:
    parser = argparse.ArgumentParser(description="ec2-sandbox demo")
    parser.add_argument("-E", "--environment", help="environment name (default: the local default)")
    parser.add_argument("--config", help="configuration file")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each step (DEBUG logging)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.environment or args.config:
        sandbox = Sandbox.from_config(args.config, args.environment or "default")
    else:
        sandbox = Sandbox()

    with sandbox:
        section("1. Hello world")
        result = sandbox.execute_code(
            'print("Hello from EC2 Sandbox!")\nimport sys\nprint(f"Python version: {sys.version.split()[0]}")'
        )
        print(f"success: {result.success}  exit: {result.return_code}  time: {result.execution_time:.3f}s")
        print(f"isolation: {result.isolation}  limits: {', '.join(result.limits_enforced)}")
        print(result.stdout, end="")

        section("2. Input files")
        files = {
            "data.csv": "name,age\nAlice,25\nBob,30",
            "config/settings.json": '{"format": "csv"}',
        }
        code = (
            "import csv, json\n"
            "config = json.load(open('config/settings.json'))\n"
            "rows = list(csv.DictReader(open('data.csv')))\n"
            "print(f\"Loaded {len(rows)} records as {config['format']}\")\n"
            "for row in rows:\n    print(row)\n"
        )
        print(sandbox.execute_code(code, files=files).stdout, end="")

        section("3. Environment variables (values arrive exactly as given)")
        code = "import os\nfor name in ('API_KEY', 'DEBUG_MODE'):\n    print(name, '=', os.environ[name])"
        env = {"API_KEY": "your-api-key; $(not a command)", "DEBUG_MODE": "true"}
        print(sandbox.execute_code(code, env_vars=env).stdout, end="")

        section("4. Fetching generated files")
        code = (
            "import json\n"
            "json.dump({'sum': sum(range(1, 101))}, open('result.json', 'w'))\n"
            "open('chart.bin', 'wb').write(bytes([137, 80, 78, 71]))\n"
            "print('wrote result.json and chart.bin')\n"
        )
        result = sandbox.execute_code(code)
        print(result.stdout, end="")
        print("files created:", result.files_created)
        print("all files:", sandbox.get_task_files(result.task_hash))
        print("result.json:", sandbox.get_task_files(result.task_hash, "result.json"))

        section("5. Node.js and a session that keeps its files")
        sandbox.execute_code(
            "require('fs').writeFileSync('count.txt', '1')", runtime="node", session_id="demo"
        )
        again = sandbox.execute_code(
            "n = int(open('count.txt').read()) + 1\nprint('count is now', n)", session_id="demo"
        )
        print(again.stdout, end="")

        section("6. A run that exceeds its time limit")
        result = sandbox.execute_code(
            "import time\nprint('working...', flush=True)\ntime.sleep(30)", timeout=2
        )
        print(f"success: {result.success}  reason: {result.termination_reason}  ({result.error_message})")
        print(f"output it made before: {result.stdout.strip()!r}")

        section("7. The target")
        status = sandbox.instance_status()
        print(f"{status.transport} -> {status.target}: {'healthy' if status.healthy else 'UNHEALTHY'}")
        for runtime in status.runtimes:
            print(f"  {runtime.name:8} {runtime.version}")
        for warning in status.warnings:
            print(f"  warning: {warning}")

        removed = sandbox.cleanup_tasks()  # the environment's cleanup_after_hours
        print(f"\ncleanup (older than {removed.hours} h) removed {len(removed.removed)} entries")


if __name__ == "__main__":
    main()
