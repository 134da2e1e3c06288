"""LangChain's standard suite for Deep Agents sandbox backends, as published, on the local transport.

The suite's tests run as they are; the seven that assert Deep Agents' pre-0.7 contract are expected to fail
(see ``deepagents_support.PRE_07_CONTRACT``), strictly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from deepagents_support import class_base_dir, with_stale_tests_marked
from langchain_tests.integration_tests import SandboxIntegrationTests

from ec2_sandbox import SandboxConfig
from ec2_sandbox_langchain import EC2SandboxBackend

__all__ = ["class_base_dir"]


@with_stale_tests_marked
class TestEC2SandboxBackendLocal(SandboxIntegrationTests):
    @pytest.fixture(scope="class")
    @classmethod
    def sandbox(cls, class_base_dir: str) -> Iterator[EC2SandboxBackend]:
        backend = EC2SandboxBackend(SandboxConfig(base_sandbox_dir=class_base_dir), session_id="standard")
        try:
            yield backend
        finally:
            backend.close()
