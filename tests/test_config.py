"""Configuration: presets, files, extends, layering, override variables and validation messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ec2_sandbox.config import SandboxConfig
from ec2_sandbox.config_manager import (
    PRESET_NAMES,
    ConfigManager,
    InvalidConfigError,
    env_var_for,
    preset_path,
)
from ec2_sandbox.errors import ConfigError
from ec2_sandbox.plugins import get_registry

pytestmark = pytest.mark.usefixtures("no_config_overrides")

REPO = Path(__file__).resolve().parents[1]

PRESET_TABLE = {  # the issue's table: max_execution_time, max_memory_mb, cleanup_after_hours
    "default": (300, 1024, 24),
    "development": (60, 512, 1),
    "production": (900, 4096, 48),
    "data-science": (1800, 8192, 72),
    "web-development": (300, 2048, 24),
    "education": (120, 256, 2),
}


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def problems_of(manager: ConfigManager, name: str, **overrides: Any) -> list[str]:
    with pytest.raises(InvalidConfigError) as info:
        manager.resolve(name, overrides)
    return info.value.problems


# ----------------------------------------------------------------------------------------- presets


def test_six_presets_with_the_issue_limits_and_no_file() -> None:
    manager = ConfigManager()
    assert manager.path is None
    assert manager.names() == list(PRESET_NAMES)
    for name, (seconds, memory, hours) in PRESET_TABLE.items():
        config = manager.get_config(name)
        assert (config.max_execution_time, config.max_memory_mb, config.cleanup_after_hours) == (
            seconds,
            memory,
            hours,
        )
        assert config.resolved_transport == "local"
    assert manager.get_config("web-development").network is True
    assert manager.get_config("web-development").allowed_runtimes[0] == "node"
    strict = manager.get_config("education")
    assert strict.network is False and strict.max_processes <= 32 and strict.max_file_size_mb <= 10
    assert manager.validate() == {name: [] for name in PRESET_NAMES}


def test_default_preset_is_the_builtin_defaults() -> None:
    preset = ConfigManager().get_config("default")
    assert preset == SandboxConfig()


def test_presets_ship_inside_the_package_and_at_the_repo_root() -> None:
    for name in PRESET_NAMES:
        inside = preset_path(name)
        assert inside.is_file()
        assert "ec2_sandbox" in inside.parts
        assert (REPO / "environments" / f"{name}.json").read_bytes() == inside.read_bytes()


def test_presets_load_from_a_built_wheel_outside_the_checkout(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel"
    out = tmp_path / "dist"
    subprocess.run(
        [uv, "build", "--wheel", "--package", "ec2-sandbox", "-o", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = out.glob("ec2_sandbox-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import ec2_sandbox, json\n"
        "from ec2_sandbox.config_manager import ConfigManager\n"
        "m = ConfigManager(environ={})\n"
        "print(json.dumps([ec2_sandbox.__file__, m.names(), m.get_config('education').max_memory_mb]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EC2_SANDBOX")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    module_file, names, memory = json.loads(proc.stdout)
    assert module_file.startswith(str(site))
    assert names == list(PRESET_NAMES) and memory == 256


# ----------------------------------------------------------------------------------------- files


def test_file_format_comments_and_environment_over_its_preset(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {
            "_comment": "ignored",
            "production": {"_note": "ignored too", "instance_id": "i-0123456789abcdef0"},
            "staging": {"region": "eu-west-1", "max_memory_mb": 2048},
        },
    )
    manager = ConfigManager(path)
    prod = manager.resolve("production")
    assert prod.config.instance_id == "i-0123456789abcdef0"
    assert prod.config.resolved_transport == "ssm"
    assert prod.config.max_memory_mb == 4096 and prod.sources["max_memory_mb"] == "preset production"
    assert prod.sources["instance_id"] == f"file {path} [production]"
    staging = manager.resolve("staging")
    assert staging.config.max_execution_time == 300 and staging.sources["max_execution_time"] == "built-in"
    assert staging.config.max_memory_mb == 2048
    infos = {i.name: i for i in manager.environments()}
    assert infos["production"].source == f"{path} (over preset)"
    assert infos["education"].source == "preset"
    assert infos["staging"].source == str(path) and not infos["staging"].is_preset


def test_extends_chain_through_file_and_preset(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {
            "base": {"extends": "education", "region": "us-west-2"},
            "team": {"extends": "base", "max_memory_mb": 512},
            "education": {"extends": "education", "cleanup_after_hours": 5},
        },
    )
    manager = ConfigManager(path)
    team = manager.resolve("team")
    assert team.config.max_memory_mb == 512 and team.sources["max_memory_mb"] == f"file {path} [team]"
    assert team.config.region == "us-west-2" and team.sources["region"] == f"file {path} [base]"
    # 'base' extends 'education', which is the file's own education, itself over the preset.
    assert team.config.cleanup_after_hours == 5
    assert team.config.max_execution_time == 120 and team.sources["max_execution_time"] == "preset education"


@pytest.mark.parametrize(
    ("envs", "name", "cycle"),
    [
        ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "a", "a -> b -> a"),
        ({"a": {"extends": "b"}, "b": {"extends": "c"}, "c": {"extends": "a"}}, "b", "b -> c -> a -> b"),
        ({"solo": {"extends": "solo"}}, "solo", "solo extends itself"),
    ],
)
def test_extends_cycle_is_an_error(tmp_path: Path, envs: dict, name: str, cycle: str) -> None:
    manager = ConfigManager(write(tmp_path / "c.json", envs))
    with pytest.raises(ConfigError, match="cycle") as info:
        manager.get_config(name)
    assert cycle in str(info.value)
    assert manager.validate([name])[name]


def test_extends_unknown_environment_suggests(tmp_path: Path) -> None:
    manager = ConfigManager(write(tmp_path / "c.json", {"x": {"extends": "educaton"}}))
    with pytest.raises(ConfigError) as info:
        manager.get_config("x")
    assert "x.extends: no environment named 'educaton'" in str(info.value)
    assert "did you mean 'education'" in str(info.value)


def test_unknown_environment_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        ConfigManager().get_config("prod")
    assert "no environment named 'prod'" in str(info.value) and "production" in str(info.value)


def test_extends_must_be_a_name(tmp_path: Path) -> None:
    manager = ConfigManager(write(tmp_path / "c.json", {"x": {"extends": ["a"]}}))
    assert problems_of(manager, "x") == ["x.extends: ['a'] is not the name of an environment or preset"]


def test_broken_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{\n  "default": {\n    "max_memory_mb": 512,\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        ConfigManager(path)
    assert f"{path}: invalid JSON at line 4, column 3" in str(info.value)


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"dev": {"max_memory_mb": 512}, "dev": {"network": true}}')
    with pytest.raises(ConfigError, match=r"duplicate key 'dev'"):
        ConfigManager(path)
    path = write(tmp_path / "d.json", '{"dev": {"max_memory_mb": 512, "max_memory_mb": 1024}}')
    with pytest.raises(ConfigError, match=r"duplicate key 'max_memory_mb'"):
        ConfigManager(path)


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"dev": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):
        ConfigManager(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"default": {}}], "the top level must be a JSON object of environments"),
        ({"default": [1]}, "default: an environment must be a JSON object of settings, not a list"),
    ],
)
def test_wrong_shapes(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConfigManager(write(tmp_path / "c.json", data))


def test_missing_file_named_explicitly_says_how_to_create_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as info:
        ConfigManager(tmp_path / "nope.json")
    assert "does not exist" in str(info.value) and "ec2-sandbox config template" in str(info.value)
    monkeypatch.setenv("EC2_SANDBOX_CONFIG", str(tmp_path / "gone.json"))
    with pytest.raises(ConfigError, match=r"gone\.json.*named by EC2_SANDBOX_CONFIG.*does not exist"):
        ConfigManager()


def test_file_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config.json", {"here": {}})
    assert ConfigManager().path == Path("config.json") and "here" in ConfigManager().names()
    other = write(tmp_path / "other.json", {"there": {}})
    monkeypatch.setenv("EC2_SANDBOX_CONFIG", str(other))
    assert ConfigManager().path == other and "here" not in ConfigManager().names()
    explicit = write(tmp_path / "explicit.json", {"mine": {}})
    assert ConfigManager(explicit).names()[-1] == "mine"


def test_sandbox_from_config(tmp_path: Path) -> None:
    from ec2_sandbox.sandbox import AsyncSandbox, Sandbox

    path = write(tmp_path / "c.json", {"tiny": {"extends": "education", "max_memory_mb": 128}})
    assert Sandbox.from_config(path, "tiny").config.max_memory_mb == 128
    assert AsyncSandbox.from_config(None, "data-science").config.max_memory_mb == 8192


# ----------------------------------------------------------------------------------------- layering


def test_precedence_preset_file_variable_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.json", {"production": {"max_memory_mb": 2000}})
    manager = ConfigManager(path)

    def memory() -> tuple[int, str]:
        resolved = manager.resolve("production")
        return resolved.config.max_memory_mb, resolved.sources["max_memory_mb"]

    assert ConfigManager().resolve("production").sources["max_memory_mb"] == "preset production"
    assert memory() == (2000, f"file {path} [production]")
    monkeypatch.setenv("MAX_MEMORY_MB", "3000")
    assert memory() == (3000, "variable MAX_MEMORY_MB")
    monkeypatch.setenv("EC2_SANDBOX_MAX_MEMORY_MB", "3500")
    assert memory() == (3500, "variable EC2_SANDBOX_MAX_MEMORY_MB")
    resolved = manager.resolve("production", {"max_memory_mb": 3600})
    assert (resolved.config.max_memory_mb, resolved.sources["max_memory_mb"]) == (3600, "argument")
    assert manager.get_config("production", max_memory_mb=3700).max_memory_mb == 3700


def test_aws_region_beats_aws_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert ConfigManager().get_config().region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    resolved = ConfigManager().resolve()
    assert resolved.config.region == "eu-central-1" and resolved.sources["region"] == "variable AWS_REGION"


def test_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_MEMORY_MB", "")
    assert ConfigManager().get_config("education").max_memory_mb == 256


ALIAS_CASES = [
    # variable, field, valid value, parsed, invalid value, rule in the message
    (
        "EC2_INSTANCE_ID",
        "instance_id",
        "i-0abcdef1234567890",
        "i-0abcdef1234567890",
        "i-xyz",
        "not an instance",
    ),
    ("AWS_DEFAULT_REGION", "region", "ap-south-1", "ap-south-1", "Mars", "not a region"),
    ("AWS_REGION", "region", "us-gov-west-1", "us-gov-west-1", "us_east_1", "not a region"),
    ("AWS_PROFILE", "aws_profile", "dev", "dev", None, None),
    ("MAX_EXECUTION_TIME", "max_execution_time", "600", 600, "0", "is below the minimum 1"),
    ("MAX_MEMORY_MB", "max_memory_mb", "2048", 2048, "lots", "is not a whole number"),
    ("SANDBOX_BASE_DIR", "base_sandbox_dir", "/srv/sandbox", "/srv/sandbox", None, None),
    ("CLEANUP_AFTER_HOURS", "cleanup_after_hours", "12", 12, "8761", "is above the maximum 8760"),
]


@pytest.mark.parametrize(("var", "field", "good", "parsed", "bad", "rule"), ALIAS_CASES)
def test_seed_override_variables(
    monkeypatch: pytest.MonkeyPatch, var: str, field: str, good: str, parsed: Any, bad: str | None, rule: str
) -> None:
    monkeypatch.setenv(var, good)
    resolved = ConfigManager().resolve("development")
    assert getattr(resolved.config, field) == parsed
    assert resolved.sources[field] == f"variable {var}"
    if bad is None:
        return
    monkeypatch.setenv(var, bad)
    (problem,) = problems_of(ConfigManager(), "development")
    assert problem.startswith(f"development.{field}: {bad!r} ")
    assert rule in problem and f"(from variable {var})" in problem


# A valid and (where one exists) an invalid value for the generic variable of each field.
FIELD_SAMPLES: dict[str, tuple[str, Any, str | None]] = {
    "transport": ("local", "local", "ftp"),
    "instance_id": ("i-01234567", "i-01234567", "i-0123"),
    "region": ("eu-north-1", "eu-north-1", "eu-north"),
    "base_sandbox_dir": ("/var/tmp/sb", "/var/tmp/sb", None),
    "aws_profile": ("ops", "ops", None),
    "access_key_id": ("AKIAEXAMPLE12345", "AKIAEXAMPLE12345", None),
    "secret_access_key": ("s3cr3t-value", "s3cr3t-value", None),
    "session_token": ("t0ken-value", "t0ken-value", None),
    "max_execution_time": ("86400", 86400, "86401"),
    "max_memory_mb": ("64", 64, "63"),
    "max_processes": ("10", 10, "0"),
    "max_file_size_mb": ("5", 5, "-1"),
    "max_open_files": ("64", 64, "8"),
    "max_output_chars": ("5000", 5000, "10"),
    "cleanup_after_hours": ("8760", 8760, "0"),
    "allowed_runtimes": ("python3, bash", ["python3", "bash"], "[python3"),
    "network": ("yes", True, "maybe"),
    "isolation": ("none", "none", "docker"),
    "cleanup_policy": ("age", "age", None),
    "ssh_user": ("ec2-user", "ec2-user", None),
    "ssh_port": ("2222", 2222, "70000"),
    "ssh_host": ("10.0.0.5", "10.0.0.5", None),
    "ssh_key_file": ("/k/id_ed25519", "/k/id_ed25519", None),
    "eic_endpoint_id": ("eice-0123", "eice-0123", None),
    "fleet_auto_scaling_group": ("agents", "agents", None),
    "fleet_tags": ("team=ml,tier=a", ["team=ml", "tier=a"], "no-equals"),
    "fleet_instance_ids": ("i-0123456789abcdef0", ["i-0123456789abcdef0"], "i-xyz"),
    "fleet_table": ("agents-leases", "agents-leases", "no"),
}
# Fields added later get a derived sample so each still has its variable checked.
for _name, _info in SandboxConfig.model_fields.items():
    if _name not in FIELD_SAMPLES and _info.annotation is bool:
        FIELD_SAMPLES[_name] = (str(not _info.default).lower(), not _info.default, "perhaps")
    elif _name not in FIELD_SAMPLES and isinstance(_info.default, int | str):
        FIELD_SAMPLES[_name] = (str(_info.default), _info.default, None)
    elif _name not in FIELD_SAMPLES:
        FIELD_SAMPLES[_name] = ("/some/path", "/some/path", None)


@pytest.mark.parametrize("field", list(SandboxConfig.model_fields))
def test_generic_variable_for_every_field(monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    good, parsed, bad = FIELD_SAMPLES[field]
    var = env_var_for(field)
    monkeypatch.setenv(var, good)
    if field == "secret_access_key":
        monkeypatch.setenv("EC2_SANDBOX_ACCESS_KEY_ID", "AKIAEXAMPLE12345")
    if field == "session_token":
        monkeypatch.setenv("EC2_SANDBOX_ACCESS_KEY_ID", "AKIAEXAMPLE12345")
        monkeypatch.setenv("EC2_SANDBOX_SECRET_ACCESS_KEY", "s3cr3t-value")
    if field == "access_key_id":
        monkeypatch.setenv("EC2_SANDBOX_SECRET_ACCESS_KEY", "s3cr3t-value")
    if field in ("fleet_auto_scaling_group", "fleet_tags", "fleet_instance_ids"):
        monkeypatch.setenv("EC2_SANDBOX_FLEET_TABLE", "agents-leases")  # a fleet needs its table
    resolved = ConfigManager().resolve("default")
    value = getattr(resolved.config, field)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    assert value == parsed
    assert resolved.sources[field] == f"variable {var}"
    if bad is not None:
        monkeypatch.setenv(var, bad)
        (problem,) = problems_of(ConfigManager(), "default")
        assert problem.startswith(f"default.{field}: {bad!r} ") and problem.endswith(f"(from variable {var})")


def test_misspelled_generic_variable_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EC2_SANDBOX_MAX_MEMROY_MB", "512")
    ConfigManager().get_config()
    assert "EC2_SANDBOX_MAX_MEMROY_MB is not a setting" in caplog.text
    assert "EC2_SANDBOX_MAX_MEMORY_MB" in caplog.text


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_execution_time", 0, "0 is below the minimum 1"),
        ("max_execution_time", 86401, "86401 is above the maximum 86400"),
        ("max_memory_mb", 63, "63 is below the minimum 64"),
        ("max_memory_mb", 99999999, "99999999 is above the maximum 262144"),
        ("cleanup_after_hours", 0, "0 is below the minimum 1"),
        ("cleanup_after_hours", 8761, "8761 is above the maximum 8760"),
        ("max_memory_mb", 1.5, "1.5 is not a whole number"),
        ("max_memory_mb", "lots", "'lots' is not a whole number"),
        ("network", "maybe", "'maybe' is not true or false"),
        ("transport", "ftp", "'ftp' is not a registered transport; registered (built-ins and plugins)"),
        ("instance_id", "i-123", "'i-123' is not an instance id: expected 'i-' and 8 or 17 hex digits"),
        ("instance_id", "i-0123456789ABCDEF0", "is not an instance id"),
        ("instance_id", "i-0123456789abcdef", "is not an instance id"),
        ("region", "US-EAST-1", "'US-EAST-1' is not a region name like 'us-east-1'"),
        ("region", "useast1", "is not a region name"),
        ("allowed_runtimes", [], "[] is empty"),
        ("allowed_runtimes", "python3", "'python3' is not a list"),
        ("allowed_runtimes", ["python3", "cobol"], "names runtime(s) not registered: cobol"),
    ],
)
def test_each_rule_names_environment_field_value_and_rule(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    path = write(tmp_path / "c.json", {"production": {field: value}})
    (problem,) = problems_of(ConfigManager(path), "production")
    assert problem.startswith(f"production.{field}: ")
    assert message in problem
    assert problem.endswith(f"(from file {path} [production])")


def test_valid_ids_and_regions(tmp_path: Path) -> None:
    manager = ConfigManager()
    for instance in ("i-01234567", "i-0123456789abcdef0"):
        assert manager.get_config(instance_id=instance).instance_id == instance
    for region in ("us-east-1", "eu-central-2", "ap-southeast-4", "us-gov-west-1", "cn-north-1"):
        assert manager.get_config(region=region).region == region


def test_all_problems_at_once_with_the_issue_example(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {
            "production": {
                "max_memory_mb": 99999999,
                "max_execution_time": 0,
                "region": "mars",
                "max_memroy_mb": 512,
                "allowed_runtimes": ["python3", "ruby"],
            }
        },
    )
    problems = problems_of(ConfigManager(path), "production")
    assert len(problems) == 5
    text = "\n".join(problems)
    assert "production.max_memory_mb: 99999999 is above the maximum 262144" in text
    assert "production.max_execution_time: 0 is below the minimum 1" in text
    assert "production.region: 'mars'" in text
    assert "production.max_memroy_mb: is not a known field" in text and "did you mean 'max_memory_mb'" in text
    assert "production.allowed_runtimes" in text and "ruby" in text
    with pytest.raises(ConfigError) as info:
        ConfigManager(path).get_config("production")
    assert str(info.value).startswith("5 problems:")


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"dev": {"timeout": 5}})
    (problem,) = problems_of(ConfigManager(path), "dev")
    assert problem.startswith("dev.timeout: is not a known field")
    with pytest.raises(ConfigError, match=r"argument.*did you mean 'network'"):
        ConfigManager().get_config(networks=True)


def test_plugin_runtimes_count() -> None:
    registry = get_registry()
    assert "perl" in registry.runtimes, "the workspace's first-party perl plugin is installed by uv sync"
    assert ConfigManager().get_config(allowed_runtimes=["perl", "python3"]).allowed_runtimes == [
        "perl",
        "python3",
    ]
    manager = ConfigManager(registered_runtimes=["python3", "ruby"])
    assert manager.get_config(allowed_runtimes=["ruby"]).allowed_runtimes == ["ruby"]
    with pytest.raises(ConfigError, match="not registered: perl"):
        manager.get_config(allowed_runtimes=["perl"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"access_key_id": "AKIAEXAMPLE12345"},
            "production.secret_access_key: is missing while access_key_id",
        ),
        ({"secret_access_key": "s3cr3t"}, "production.access_key_id: is missing while secret_access_key"),
        ({"session_token": "t0k"}, "production.session_token: is set (from file"),
    ],
)
def test_half_credentials_are_errors(tmp_path: Path, settings: dict, message: str) -> None:
    path = write(tmp_path / "c.json", {"production": settings})
    (problem,) = problems_of(ConfigManager(path), "production")
    assert message in problem


def test_half_credentials_reported_with_other_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"x": {"access_key_id": "AKIAEXAMPLE12345", "max_memory_mb": 1}})
    problems = problems_of(ConfigManager(path), "x")
    assert len(problems) == 2
    assert any("secret_access_key: is missing" in p for p in problems)


@pytest.mark.parametrize(
    ("transport", "needs"), [("ssm", "instance_id"), ("eic", "instance_id"), ("ssh", "ssh_host")]
)
def test_remote_transports_need_their_target(transport: str, needs: str) -> None:
    (problem,) = problems_of(ConfigManager(), "default", transport=transport)
    assert problem.startswith(f"default.{needs}: is required when transport is {transport!r} (from argument)")
    assert ConfigManager().get_config(transport="ssh", ssh_host="10.1.2.3").resolved_transport == "ssh"


def test_cleanup_policy_must_be_registered(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"x": {"cleanup_policy": "keep-oldest"}})
    (problem,) = problems_of(ConfigManager(path), "x")
    assert problem.startswith(
        f"x.cleanup_policy: 'keep-oldest' is not a registered cleanup policy (from file {path}"
    )
    assert "age" in problem
    assert ConfigManager(registered_policies=["age", "keep-oldest"]).get_config(cleanup_policy="keep-oldest")


def test_auth_modes() -> None:
    from ec2_sandbox.aws_session import auth_mode

    manager = ConfigManager()
    assert auth_mode(manager.get_config()) == "default_chain"
    assert auth_mode(manager.get_config(aws_profile="p")) == "profile"
    keys = {"access_key_id": "AKIAEXAMPLE12345", "secret_access_key": "s"}
    assert auth_mode(manager.get_config(**keys)) == "access_keys"
    assert auth_mode(manager.get_config(**keys, session_token="t")) == "temporary_credentials"
    assert auth_mode(manager.get_config(**keys, aws_profile="p")) == "access_keys"
