"""Transports' options models: registered with the transport, validated with the configuration, flat keys.

The ``options`` fixture plugin registers transport ``fixture-opts`` with ``FixtureOptions``
(``fixture_host``, ``fixture_port``, ``fixture_modes``, ``fixture_token``); ``options-broken`` registers
transports whose options cannot be used or whose factories misbehave. The built-in ``ssh``, ``eic`` and
``ssm`` transports carry the settings the configuration has always had (``ssh_user``, ``s3_bucket``, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from plugin_fixtures import FIXTURES, install
from pydantic import SecretStr, ValidationError
from support.cli import cli

from ec2_sandbox import PluginError, SandboxConfig, plugins
from ec2_sandbox.config_manager import ConfigManager, InvalidConfigError
from ec2_sandbox.plugins import BUILTINS, Registry, get_registry, load_registry
from ec2_sandbox.transport_options import EICOptions, SSHOptions, SSMOptions


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    # A SandboxConfig built in code validates against the process's registry: load it now, without the
    # fixtures, so that no test leaves them in it for the tests that run after it in this process.
    get_registry()

    def installer(names: list[str]) -> Registry:
        monkeypatch.syspath_prepend(str(install(tmp_path / "site", names)))
        return load_registry()

    return installer


def manager(tmp_path: Path, registry: Registry, body: dict, **environ: str) -> ConfigManager:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"default": body}))
    return ConfigManager(path, environ=environ, registry=registry)


def problems(tmp_path: Path, registry: Registry, body: dict, **environ: str) -> list[str]:
    with pytest.raises(InvalidConfigError) as caught:
        manager(tmp_path, registry, body, **environ).get_config("default")
    return caught.value.problems


def fixture_options(registry: Registry):  # type: ignore[no-untyped-def]
    return next(s for s in registry.options if s.transport == "fixture-opts").model


# ---------------------------------------------------------------------- registration
def test_the_builtin_transports_carry_their_settings_as_options() -> None:
    registry = load_registry()
    owners = {name: (s.transport, s.plugin) for name, s in registry.option_fields().items()}
    assert owners["ssh_user"] == ("ssh", BUILTINS) and owners["ssh_sudo"] == ("ssh", BUILTINS)
    assert owners["eic_endpoint_id"] == ("eic", BUILTINS) and owners["s3_bucket"] == ("ssm", BUILTINS)
    assert [s.model for s in registry.options][:3] == [SSMOptions, SSHOptions, EICOptions]
    # the core model holds none of them: they belong to their transports
    assert not set(owners) & set(SandboxConfig.model_fields)


def test_a_plugin_transport_registers_its_options(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options"])
    assert registry.errors == []
    spec = next(s for s in registry.options if s.transport == "fixture-opts")
    assert spec.plugin == "options"
    assert set(spec.model.model_fields) == {"fixture_host", "fixture_port", "fixture_modes", "fixture_token"}
    assert registry.plugin("options").registered == ["transport:fixture-opts"]  # type: ignore[union-attr]


def test_unusable_options_drop_the_transport_with_the_reason(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options-broken"])
    errors = "\n".join(registry.errors)
    assert (
        "conflict: plugin 'options-broken' registers transport 'fixture-clash' in register_transports, but "
        f"its option 'ssh_user' is declared first by transport 'ssh' of plugin {BUILTINS!r}"
    ) in errors
    assert "'fixture-core' in register_transports, but its option 'max_memory_mb' is a core" in errors
    assert "transport 'fixture-nodefault': options field 'fixture_required' has no default" in errors
    assert "transport 'fixture-badname': options field 'FixtureUpper' must match" in errors
    assert "transport 'fixture-notamodel': options must be a pydantic BaseModel subclass" in errors
    assert len(registry.errors) == 5, registry.errors
    dropped = ("fixture-clash", "fixture-core", "fixture-nodefault", "fixture-badname", "fixture-notamodel")
    assert not set(dropped) & set(registry.transports)
    assert {"fixture-fine", "fixture-raising"} <= set(registry.transports)
    assert registry.option_fields()["ssh_user"].transport == "ssh"  # the built-in keeps its option


# ---------------------------------------------------------------------- validation with the configuration
def test_flat_plugin_options_from_file_and_variables(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options"])
    model = fixture_options(registry)
    resolved = manager(
        tmp_path,
        registry,
        {"fixture_host": "box.internal", "fixture_token": "s3cr3t", "max_memory_mb": 512},
        EC2_SANDBOX_FIXTURE_PORT="7001",
        EC2_SANDBOX_FIXTURE_MODES="x, y",
    ).resolve("default")
    config = resolved.config
    options = config.options(model)
    assert (options.fixture_host, options.fixture_port) == ("box.internal", 7001)
    assert options.fixture_modes == ["x", "y"]
    assert isinstance(options.fixture_token, SecretStr)
    assert options.fixture_token.get_secret_value() == "s3cr3t"
    assert config.fixture_port == 7001 and config.max_memory_mb == 512  # attribute access, like the core's
    assert resolved.sources["fixture_port"] == "variable EC2_SANDBOX_FIXTURE_PORT"
    assert resolved.sources["fixture_host"].startswith("file ")
    rows = {name: value for name, value, _ in resolved.rows()}
    assert rows["fixture_token"] == "****" and rows["fixture_host"] == "box.internal"
    # the transport gets them through its factory
    transport = registry.transports["fixture-opts"](config)
    assert transport.options.fixture_port == 7001


def test_bad_plugin_options_are_reported_with_the_core_problems(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options"])
    found = problems(
        tmp_path,
        registry,
        {"fixture_port": "7001", "fixture_host": "a b", "max_memory_mb": 1, "fixture_token": 918273},
        EC2_SANDBOX_FIXTURE_MODES='["x"',
    )
    owner = "(an option of transport 'fixture-opts', plugin 'options')"
    assert f"default.fixture_port: '7001' is not a whole number {owner} (from file" in "\n".join(found)
    assert f"default.fixture_host: 'a b' must not contain spaces {owner}" in "\n".join(found)
    assert any(p.startswith("default.max_memory_mb: 1 is below the minimum 64") for p in found)
    assert any(p.startswith(f"default.fixture_token: '****' is not a string {owner}") for p in found), found
    assert any("default.fixture_modes: '[\"x\"' is not a JSON list" in p for p in found), found
    assert "918273" not in "\n".join(found)


def test_an_unknown_option_names_the_plugin_it_resembles(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options"])
    (problem,) = problems(tmp_path, registry, {"fixture_hots": "x"})
    assert problem.startswith("default.fixture_hots: is not a known field (from file")
    assert problem.endswith(
        "did you mean 'fixture_host' (an option of transport 'fixture-opts', plugin 'options')?"
    )


def test_without_the_plugin_its_options_are_unknown_fields(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EC2_SANDBOX_PLUGINS", "")
    (problem,) = problems(tmp_path, load_registry(), {"fixture_host": "x"})
    assert problem.startswith("default.fixture_host: is not a known field")


def test_options_validated_in_code_name_the_plugin(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options"])
    with pytest.raises(ValidationError) as caught:
        SandboxConfig.model_validate({"fixture_port": 0, "region": "x"}, context={"registry": registry})
    text = str(caught.value)
    assert "fixture_port\n" in text and "(an option of transport 'fixture-opts', plugin 'options')" in text
    assert "region\n" in text  # the core's problems in the same error
    with pytest.raises(PluginError, match=r"plugin 'options': its options model FixtureOptions raised TypeE"):
        SandboxConfig.model_validate({"fixture_modes": ["explode"]}, context={"registry": registry})


# ---------------------------------------------------------------------- the built-ins' flat keys keep working
def test_existing_flat_ssh_eic_s3_keys_keep_working(tmp_path: Path) -> None:
    registry = load_registry()
    body = {
        "transport": "eic",
        "instance_id": "i-0123456789abcdef0",
        "region": "us-east-1",
        "ssh_user": "ec2-user",
        "ssh_port": 2222,
        "ssh_sudo": True,
        "eic_endpoint_id": "eice-0123456789abcdef0",
        "s3_bucket": "my-bucket",
    }
    config = manager(tmp_path, registry, body).get_config("default")
    assert (config.ssh_user, config.ssh_port, config.ssh_sudo) == ("ec2-user", 2222, True)
    assert config.options(SSHOptions).ssh_user == "ec2-user"
    assert config.options(EICOptions).eic_endpoint_id == "eice-0123456789abcdef0"
    assert config.options(SSMOptions).s3_bucket == config.s3_bucket == "my-bucket"
    # a dump holds them flat and validates back to an equal configuration
    dumped = config.model_dump()
    assert dumped["ssh_user"] == "ec2-user" and dumped["s3_bucket"] == "my-bucket"
    assert SandboxConfig.model_validate(dumped) == config
    # copies keep them; assignment validates them and leaves the copy alone
    copy = config.model_copy(update={"max_memory_mb": 2048})
    assert copy.ssh_port == 2222
    config.ssh_port = 2200
    assert (config.ssh_port, copy.ssh_port) == (2200, 2222)
    with pytest.raises(ValidationError):
        config.ssh_port = 0
    assert "ssh_user='ec2-user'" in repr(config)
    problem = problems(tmp_path, registry, {**body, "ssh_port": 70000})
    assert problem == [
        f"default.ssh_port: 70000 is above the maximum 65535 (an option of transport 'ssh', built in) "
        f"(from file {tmp_path / 'config.json'} [default])"
    ]


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        SandboxConfig().no_such_setting  # noqa: B018


# ---------------------------------------------------------------------- PluginError where a plugin misbehaves
def test_a_plugin_factory_that_fails_raises_plugin_error(site) -> None:  # type: ignore[no-untyped-def]
    registry = site(["options-broken"])
    returned = "plugin 'options-broken': the factory of transport 'fixture-fine' returned int"
    with pytest.raises(PluginError, match=returned):
        registry.transports["fixture-fine"](SandboxConfig())
    with pytest.raises(PluginError, match="transport 'fixture-raising' failed to start: KeyError"):
        registry.transports["fixture-raising"](SandboxConfig())


def test_asking_for_the_registry_while_it_loads_is_a_plugin_error(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(plugins, "_registry", None)  # restored after the test
    site(["reentrant"])
    registry = plugins.get_registry()
    (error,) = registry.errors
    assert error.startswith("plugin 'reentrant' raised in register_runtimes: PluginError: the plugin regis")


# ---------------------------------------------------------------------- config show
def test_config_show_lists_plugin_options_under_their_transport(tmp_path: Path, tmp_base_dir: str) -> None:
    site = install(tmp_path / "site", ["options"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(site), str(FIXTURES.parent)]),
        "EC2_SANDBOX_FIXTURE_PORT": "7002",
        "EC2_SANDBOX_FIXTURE_TOKEN": "hunter2",
    }

    def show(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(env, "config", "show", *args, cwd=tmp_path, text=True)

    proc = show("--set", "fixture_host=h1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    heading = lines.index("# options of transport 'fixture-opts' (plugin 'options')")
    section = [line.split() for line in lines[heading + 1 : heading + 5]]
    assert section == [
        ["fixture_host", "h1", "argument"],
        ["fixture_port", "7002", "variable", "EC2_SANDBOX_FIXTURE_PORT"],
        ["fixture_modes", "a", "built-in"],
        ["fixture_token", "****", "variable", "EC2_SANDBOX_FIXTURE_TOKEN"],
    ]
    assert "# options of transport 'ssh' (built in)" in lines
    assert "hunter2" not in proc.stdout + proc.stderr
    data = json.loads(show("--json").stdout)["fields"]
    assert data["fixture_port"] == {
        "value": 7002,
        "source": "variable EC2_SANDBOX_FIXTURE_PORT",
        "option_of": {"transport": "fixture-opts", "plugin": "options"},
    }
    assert data["ssh_user"]["option_of"] == {"transport": "ssh", "plugin": BUILTINS}
    assert "option_of" not in data["max_memory_mb"]
    proc = show("--set", "fixture_port=0")
    assert proc.returncode == 125
    assert (
        "default.fixture_port: 0 is below the minimum 1 (an option of transport 'fixture-opts', plugin "
        "'options') (from argument)"
    ) in proc.stderr
