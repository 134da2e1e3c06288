"""Fixtures and hooks shared by every test folder of the workspace: tests/, adapters/*/tests/ and
plugins/*/tests/ (this file is their common ancestor; tests/support is importable from all of them
through the ``pythonpath`` setting in pyproject.toml)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmp_base_dir() -> Iterator[str]:
    """A fresh sandbox base dir. Under /tmp with mode 0711: when tests run as root, the runner drops each
    run to its own unprivileged uid, which must be able to traverse to its work dir."""
    path = tempfile.mkdtemp(prefix="ec2sb-test-", dir="/tmp")
    os.chmod(path, 0o711)
    yield path
    close_interpreters(path)
    shutil.rmtree(path, ignore_errors=True)


def close_interpreters(base: str) -> None:
    """Close the sessions' interpreters a test left running on ``base`` (they would idle on for minutes)."""
    from ec2_sandbox import runner

    kernels = os.path.join(base, runner.KERNELS)
    if not os.path.isdir(kernels):
        return
    for name in os.listdir(kernels):
        if name.endswith(".json"):
            with open(os.path.join(kernels, name), "rb") as fh:
                session_id = json.loads(fh.read()).get("session_id")
            if session_id:
                runner.ask_host(base, session_id, {"op": "close"}, 30)


@pytest.fixture
def cli_env(tmp_base_dir: str, tmp_path: Path) -> dict[str, str]:
    """An environment for ``ec2-sandbox`` subprocesses: none of the developer's settings, a fresh base dir."""
    from support.cli import clean_env

    return clean_env(tmp_base_dir)


@pytest.fixture
def no_config_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config override variable or EC2_SANDBOX_CONFIG of the developer's shell, and no ./config.json,
    leaks into a test: it runs in its own empty directory."""
    from ec2_sandbox.config_manager import ENV_ALIASES, env_var_for, fields

    for var, _ in ENV_ALIASES:
        monkeypatch.delenv(var, raising=False)
    for name in fields():  # the core's settings and every transport's options (ssh_*, s3_bucket, ...)
        monkeypatch.delenv(env_var_for(name), raising=False)
    monkeypatch.delenv("EC2_SANDBOX_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


#: Modules whose tests start real servers or processes: sshd, the SSM stand-in and moto, the CLI itself.
INTEGRATION_MODULES = frozenset(
    {
        "test_ssm.py",
        "test_ssh.py",
        "test_eic.py",
        "test_cli.py",
        "test_cli_exec.py",
        "test_config_cli.py",
        "test_plugins_cli.py",
        "test_plugins_ssm.py",
        "test_provisioning_script.py",
        "test_provisioning_userdata.py",
        "test_mcp.py",
        "test_langchain_ssh.py",
    }
)
#: Modules that take a minute or more on an idle machine (measured with --durations).
SLOW_MODULES = frozenset({"test_ssm.py", "test_provisioning_script.py", "test_attacks_resources.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers by module, kept in this one table (-m 'not slow' for a quick pass; the default runs all).
    Under EC2_SANDBOX_NO_SKIPS=1 a test may not skip for a missing system package: CI must have it."""
    no_skips = os.environ.get("EC2_SANDBOX_NO_SKIPS") == "1"
    for item in items:
        module = item.path.name
        if module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if no_skips:
            item.add_marker(pytest.mark.no_skips)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # An expected failure ran (and a strict one fails the run if it passes): only a test that did not run is
    # a skip here.
    ran = hasattr(report, "wasxfail")
    if report.skipped and not ran and item.get_closest_marker("no_skips") and call.when in ("setup", "call"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under EC2_SANDBOX_NO_SKIPS=1 (CI must provide this): {reason}"
