"""Plugin registrations in configuration: allowed_runtimes is checked against the registry, and an
environment picks the keep-newest policy by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ec2_sandbox import AsyncSandbox, ConfigError
from ec2_sandbox.config_manager import ConfigManager
from ec2_sandbox.plugins import load_registry
from ec2_sandbox.tools import TOOLS


def write_config(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "perl-only": {"base_sandbox_dir": base, "allowed_runtimes": ["perl"]},
                "scripts": {
                    "base_sandbox_dir": base,
                    "allowed_runtimes": ["perl", "sh"],
                    "cleanup_policy": "keep-newest",
                },
            }
        )
    )
    return path


def test_allowed_runtimes_accepts_the_plugin_runtime(
    tmp_path: Path, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    registry = load_registry()
    manager = ConfigManager(
        write_config(tmp_path, tmp_base_dir), environ={}, registered_runtimes=registry.runtimes
    )
    config = manager.get_config("scripts")
    assert config.allowed_runtimes == ["perl", "sh"]
    assert config.cleanup_policy == "keep-newest"
    sandbox = AsyncSandbox(config, registry=registry)
    assert TOOLS[0].input_schema(sandbox)["properties"]["runtime"]["enum"] == ["perl", "sh"]
    assert sandbox.registry.cleanup_policies[config.cleanup_policy].name == "keep-newest"


def test_allowed_runtimes_rejects_perl_when_its_plugin_is_not_loaded(
    tmp_path: Path, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "")
    registry = load_registry()
    manager = ConfigManager(
        write_config(tmp_path, tmp_base_dir), environ={}, registered_runtimes=registry.runtimes
    )
    with pytest.raises(ConfigError) as info:
        manager.get_config("perl-only")
    message = str(info.value)
    assert "perl-only.allowed_runtimes" in message
    assert "not registered: perl" in message


def test_the_default_manager_checks_against_the_process_registry(
    tmp_path: Path, tmp_base_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    config = ConfigManager(write_config(tmp_path, tmp_base_dir), environ={}).get_config("perl-only")
    assert config.allowed_runtimes == ["perl"]
