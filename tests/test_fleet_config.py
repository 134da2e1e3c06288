"""Fleet settings are validated like every other field: each problem named with the rule and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ec2_sandbox import SandboxConfig
from ec2_sandbox.config_manager import ConfigManager, InvalidConfigError

GROUP = {"fleet_auto_scaling_group": "agents", "fleet_table": "agents-leases"}


def problems(tmp_path: Path, env: dict[str, object], environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"fleet": env}))
    with pytest.raises(InvalidConfigError) as caught:
        ConfigManager(path, environ=environ or {}).get_config("fleet")
    return list(caught.value.problems)


def test_a_fleet_environment_resolves_to_the_fleet_transport(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"fleet": {**GROUP, "region": "us-east-1"}}))
    config = ConfigManager(path, environ={}).get_config("fleet")
    assert config.is_fleet and config.resolved_transport == "fleet"
    assert config.fleet_wait_seconds == 30 and config.fleet_slots_per_instance == 0


def test_tags_and_ids_come_from_variables_as_lists(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"fleet": {"fleet_table": "t-leases"}}))
    environ = {"EC2_SANDBOX_FLEET_TAGS": "team=ml,ec2-sandbox:fleet=prod"}
    config = ConfigManager(path, environ=environ).get_config("fleet")
    assert config.fleet_tags == ["team=ml", "ec2-sandbox:fleet=prod"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**GROUP, "fleet_tags": ["a=b"]}, "fleet_auto_scaling_group and fleet_tags are both set: keep one"),
        ({**GROUP, "instance_id": "i-0123456789abcdef0"}, "runs on one instance or on a fleet"),
        ({"fleet_auto_scaling_group": "agents"}, "fleet_table is not"),
        ({**GROUP, "transport": "ssm"}, "instance_id: is required when transport is 'ssm'"),
        ({**GROUP, "transport": "local"}, "a fleet runs through transport 'fleet'"),
        ({"transport": "fleet", "fleet_table": "abc"}, "transport 'fleet' needs its members"),
        ({**GROUP, "fleet_table": "no"}, "is not a DynamoDB table name"),
        ({**GROUP, "fleet_auto_scaling_group": "bad\nname"}, "is not an Auto Scaling group name"),
        ({"fleet_tags": ["no-equals"], "fleet_table": "abc"}, "'no-equals', which is not 'Key=Value'"),
        ({"fleet_tags": ["aws:x=1"], "fleet_table": "abc"}, "not starting with 'aws:'"),
        ({"fleet_tags": [], "fleet_table": "abc"}, "is empty: list at least one Key=Value tag"),
        ({"fleet_instance_ids": ["i-1; rm -rf /"], "fleet_table": "abc"}, "which is not an instance id"),
        ({**GROUP, "fleet_slots_per_instance": -1}, "fleet_slots_per_instance: -1 is below the minimum 0"),
        ({**GROUP, "fleet_wait_seconds": 3601}, "fleet_wait_seconds: 3601 is above the maximum 3600"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, env: dict[str, object], expected: str) -> None:
    found = problems(tmp_path, env)
    assert any(expected in p for p in found), found


def test_the_fleet_transport_is_registered_like_the_built_ins() -> None:
    from ec2_sandbox.plugins import get_registry

    registry = get_registry()
    assert "fleet" in registry.transports and registry.owners["transport:fleet"] == "ec2_sandbox.builtins"
    assert SandboxConfig(**GROUP).resolved_transport == "fleet"
