"""What the Deep Agents standard-suite modules share: the stale assertions, and a class base dir."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import SandboxIntegrationTests

#: Tests of langchain-tests 1.1.9 that assert Deep Agents' contract from before 0.7, which every backend
#: built on 0.7's ``BaseSandbox`` breaks (its own ``write`` and ``glob`` do): ``write`` now replaces an
#: existing file (deepagents PR 4109: "Creates the file if it does not exist; replaces it entirely if it
#: does", as the write_file tool tells the model), and ``glob`` returns absolute paths of regular files (the
#: glob tool's "returning absolute paths"; permission rules match absolute paths only). Upstream:
#: langchain-ai/langchain PR 40283, "align sandbox contract assertions". test_deepagents_backend.py checks
#: the current contract on the same cases.
PRE_07_CONTRACT = (
    "test_write_existing_file_fails",
    "test_glob",
    "test_glob_basic_pattern",
    "test_glob_with_directories",
    "test_glob_hidden_files_explicitly",
    "test_glob_with_character_class",
    "test_glob_with_question_mark",
)

STALE_REASON = (
    "asserts Deep Agents' pre-0.7 contract (write refuses an existing file; glob returns relative paths and "
    "directories); deepagents 0.7's BaseSandbox overwrites and returns absolute file paths"
)


def expected_to_fail(test: Callable[..., Any]) -> Callable[..., Any]:
    """The suite's own test, run as it is, expected to fail on its stale assertion (strict: if it ever
    passes, the run fails and this list is out of date)."""

    @functools.wraps(test)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return test(self, *args, **kwargs)

    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=STALE_REASON)(run)


def with_stale_tests_marked(cls: type[SandboxIntegrationTests]) -> type[SandboxIntegrationTests]:
    """``cls`` with each test of :data:`PRE_07_CONTRACT` marked as expected to fail; every other test of
    the suite is inherited untouched."""
    for name in PRE_07_CONTRACT:
        setattr(cls, name, expected_to_fail(getattr(SandboxIntegrationTests, name)))
    return cls


@pytest.fixture(scope="class")
def class_base_dir() -> Iterator[str]:
    """A sandbox base dir for a whole test class (the suite's ``sandbox`` fixture is class-scoped). Under
    /tmp with mode 0711, as the root conftest's ``tmp_base_dir``: a root runner's per-session uid must
    traverse it."""
    path = tempfile.mkdtemp(prefix="ec2sb-deep-", dir="/tmp")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)
