"""LangChain's standard suite for Deep Agents sandbox backends, as published, over SSH (a private sshd).

As on the local transport, the seven tests that assert Deep Agents' pre-0.7 contract are strict xfails.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deepagents_support import class_base_dir, with_stale_tests_marked
from langchain_tests.integration_tests import SandboxIntegrationTests
from support.sshd import (
    requires_sshd,
    running_sshd,
    ssh_config,  # the suite's SSH settings for its private sshd
)

from ec2_sandbox_langchain import EC2SandboxBackend

__all__ = ["class_base_dir"]

pytestmark = [requires_sshd, pytest.mark.integration]


@with_stale_tests_marked
class TestEC2SandboxBackendSSH(SandboxIntegrationTests):
    @pytest.fixture(scope="class")
    @classmethod
    def sandbox(cls, class_base_dir: str) -> Iterator[EC2SandboxBackend]:
        with running_sshd() as server, tempfile.TemporaryDirectory(prefix="ec2sb-known-") as known:
            config = ssh_config(server, class_base_dir, Path(known) / "known_hosts")
            backend = EC2SandboxBackend(config, session_id="standard-ssh")
            try:
                assert backend.sandbox.config.transport == "ssh"
                yield backend
            finally:
                backend.close()


def test_sync_and_async_calls_from_any_loop_share_one_connection(class_base_dir: str) -> None:
    """Deep Agents calls a backend from the graph's loop (async tools) and from worker threads (sync
    tools); every caller loop is served by the backend's own, so one SSH login serves them all."""
    with running_sshd() as server, tempfile.TemporaryDirectory(prefix="ec2sb-known-") as known:
        config = ssh_config(server, class_base_dir, Path(known) / "known_hosts")
        backend = EC2SandboxBackend(config, session_id="one-connection")
        try:
            assert backend.write("/tmp/shared.txt", "from sync").error is None
            for _ in range(3):  # three event loops, one after the other, as three agent runs would be
                assert asyncio.run(backend.aexecute("cat /tmp/shared.txt")).output == "from sync"
            upload = asyncio.run(backend.aupload_files([("/tmp/async.txt", b"from async")]))
            assert upload[0].error is None
            assert backend.download_files(["/tmp/async.txt"])[0].content == b"from async"
            logins = server.log_path.read_text(errors="replace").count("Accepted publickey for root")
            assert logins == 1, server.log()
        finally:
            backend.close()
