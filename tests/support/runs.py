"""Runs that are under way, for tests that break a transport in the middle of one."""

from __future__ import annotations

import asyncio

from ec2_sandbox import AsyncSandbox, ExecutionResult


async def run_in_flight(sandbox: AsyncSandbox, seconds: float) -> asyncio.Future[ExecutionResult]:
    """Start a program that prints a line, then sleeps ``seconds``; return its run once that line has arrived.

    Waiting for the output, not for a guessed delay, means whatever the caller breaks next breaks a program
    that is really running on the far side. The 30-second wait is a hang guard only.
    """
    started = asyncio.Event()
    run = asyncio.ensure_future(
        sandbox.execute_code(
            f"import time\nprint('started', flush=True)\ntime.sleep({seconds})",
            on_output=lambda stream, chunk: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    return run
