"""`ec2-sandbox config ...`: output, exit statuses, secrets never shown, `auth --check` against moto."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from ec2_sandbox.cli import EXIT_FAILED, main
from ec2_sandbox.config_manager import PRESET_NAMES, ConfigManager

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
TOKEN = "FwoGZXIvYXdzEXAMPLE-SESSION-TOKEN-VALUE"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(autouse=True)
def clean_env(no_config_overrides: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    # Never reach for the instance metadata service or the user's own AWS files.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, data: Any) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return str(path)


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    return write(
        tmp_path / "secret.json",
        {
            "prod": {
                "extends": "production",
                "region": "us-east-1",
                "access_key_id": KEY_ID,
                "secret_access_key": SECRET,
                "session_token": TOKEN,
            },
            "keys": {"access_key_id": KEY_ID, "secret_access_key": SECRET},
        },
    )


# ----------------------------------------------------------------------------------------- list


def test_list_presets_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "TRANSPORT", "INSTANCE"]
    assert [line.split()[0] for line in lines[1:]] == list(PRESET_NAMES)
    assert all(line.split()[1:] == ["preset", "local", "-"] for line in lines[1:])


def test_list_with_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {"staging": {"instance_id": "i-0123456789abcdef0"}, "broken": {"max_memory_mb": 1}, "education": {}},
    )
    code, out, _ = run(capsys, "--config", path, "config", "list", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["staging"] == {
        "name": "staging",
        "source": path,
        "transport": "ssm",
        "instance": "i-0123456789abcdef0",
    }
    assert rows["broken"]["transport"].startswith("INVALID")
    assert rows["education"]["source"] == f"{path} (over preset)"
    assert rows["default"]["source"] == "preset"


# ----------------------------------------------------------------------------------------- validate


def test_validate_exit_statuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "config", "validate")
    assert code == 0 and out.count(": ok") == 6
    path = write(tmp_path / "c.json", {"good": {}, "bad": {"max_memory_mb": 99999999, "network": "maybe"}})
    code, out, err = run(capsys, "--config", path, "config", "validate")
    assert code == 1
    assert "bad: INVALID" in out and "good: ok" in out
    assert "bad.max_memory_mb: 99999999 is above the maximum 262144" in out
    assert "bad.network: 'maybe' is not true or false" in out
    assert "1 of 8 environment(s) invalid" in err
    assert run(capsys, "--config", path, "config", "validate", "good")[0] == 0
    code, out, _ = run(capsys, "config", "validate", "bad", "--config", path, "--json")
    assert code == 1 and len(json.loads(out)["bad"]) == 2


def test_validate_unknown_environment(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "validate", "prodution")
    assert code == 1 and "did you mean 'production'" in out


def test_validate_broken_json_and_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '{"default": {"max_memory_mb": 512,}}')
    code, out, _ = run(capsys, "--config", path, "config", "validate")
    assert code == 1 and "invalid JSON at line 1, column 35" in out
    code, out, _ = run(capsys, "--config", str(tmp_path / "absent.json"), "config", "validate")
    assert code == 1 and "does not exist" in out and "ec2-sandbox config template" in out


# ----------------------------------------------------------------------------------------- show


def test_show_names_every_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.json", {"production": {"region": "eu-west-1", "max_processes": 99}})
    monkeypatch.setenv("MAX_EXECUTION_TIME", "1000")
    code, out, _ = run(
        capsys, "--config", path, "config", "show", "production", "--set", "max_memory_mb=5000"
    )
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["region"][1:] == ["eu-west-1", "file", path, "[production]"]
    assert rows["max_processes"][1:3] == ["99", "file"]
    assert rows["max_execution_time"][1:] == ["1000", "variable", "MAX_EXECUTION_TIME"]
    assert rows["max_memory_mb"][1:] == ["5000", "argument"]
    assert rows["cleanup_after_hours"][1:] == ["48", "preset", "production"]
    assert rows["isolation"][1:] == ["auto", "built-in"]
    assert rows["allowed_runtimes"][1:] == ["all", "registered", "preset", "production"]
    code, out, _ = run(
        capsys, "-E", "education", "config", "show", "--json", "--set", "allowed_runtimes=bash,sh"
    )
    data = json.loads(out)
    assert data["environment"] == "education"
    assert data["fields"]["allowed_runtimes"] == {"value": ["bash", "sh"], "source": "argument"}


def test_show_errors_exit_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "config", "show", "nope")
    assert code == EXIT_FAILED and "no environment named 'nope'" in err
    code, _, err = run(capsys, "--config", str(tmp_path / "x.json"), "config", "show")
    assert code == EXIT_FAILED and "config template" in err
    code, _, err = run(capsys, "config", "show", "--set", "max_memory_mb=99999999")
    assert code == EXIT_FAILED
    assert "default.max_memory_mb: 99999999 is above the maximum 262144 (from argument)" in err
    code, _, err = run(capsys, "config", "show", "--set", "novalue")
    assert code == EXIT_FAILED and "expected FIELD=VALUE" in err
    assert run(capsys, "config")[0] == EXIT_FAILED


# ----------------------------------------------------------------------------------------- template


def test_template_validates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "config", "template")
    assert code == 0
    data = json.loads(out)
    assert "_comment" in data and "_comment" in data["default"]
    target = tmp_path / "config.json"
    assert run(capsys, "config", "template", "--output", str(target))[0] == 0
    assert json.loads(target.read_text()) == data
    code, out, _ = run(capsys, "config", "validate")  # ./config.json is picked up
    assert code == 0 and "production: ok" in out
    assert ConfigManager().path == Path("config.json")
    code, _, err = run(capsys, "config", "template", "-o", str(target))
    assert code == EXIT_FAILED and "--force" in err
    assert run(capsys, "config", "template", "-o", str(target), "--force")[0] == 0


# ----------------------------------------------------------------------------------------- secrets


def test_secrets_never_printed(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    secret_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for args in (
        ["config", "show", "prod"],
        ["config", "show", "prod", "--json"],
        ["config", "list"],
        ["config", "validate"],
        ["config", "auth", "prod"],
        ["-vv", "config", "show", "keys"],
    ):
        code, out, err = run(capsys, "--config", secret_file, *args)
        assert code == 0, err
        seen.append(out + err)
    text = "\n".join(seen) + caplog.text
    assert "****" in text and "secret_access_key" in text
    assert SECRET not in text and TOKEN not in text
    assert "AKIA…MPLE" in text and KEY_ID not in seen[0]
    assert "environment prod: secret_access_key = '****'" in caplog.text

    manager = ConfigManager(secret_file)
    assert SECRET not in repr(manager.file_envs) and SECRET not in repr(manager.resolve("prod"))
    config = manager.get_config("prod")
    for rendered in (
        repr(config),
        str(config),
        config.model_dump_json(),
        json.dumps(config.model_dump(mode="json")),
    ):
        assert SECRET not in rendered and TOKEN not in rendered

    # from a variable, shown as coming from it
    monkeypatch.setenv("EC2_SANDBOX_SECRET_ACCESS_KEY", SECRET + "-env")
    code, out, _ = run(capsys, "--config", secret_file, "config", "show", "keys")
    assert SECRET not in out
    assert [line.split()[1:] for line in out.splitlines() if line.startswith("secret_access_key")] == [
        ["****", "variable", "EC2_SANDBOX_SECRET_ACCESS_KEY"]
    ]


def test_validate_warns_about_a_readable_file_with_secrets(
    capsys: pytest.CaptureFixture[str], secret_file: str
) -> None:
    os.chmod(secret_file, 0o644)
    code, _, err = run(capsys, "--config", secret_file, "config", "validate")
    assert code == 0
    assert f"warning: {secret_file} holds secrets (prod, keys) and is readable by others (mode 644)" in err
    os.chmod(secret_file, 0o600)
    code, _, err = run(capsys, "--config", secret_file, "config", "validate")
    assert code == 0 and "warning" not in err


def test_secrets_absent_from_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        {
            "half": {"secret_access_key": SECRET, "session_token": TOKEN},
            "typed": {"access_key_id": KEY_ID, "secret_access_key": 12345678901234},
            "typo": {"secret_acess_key": SECRET},
        },
    )
    code, out, err = run(capsys, "--config", path, "config", "validate")
    assert code == 1
    assert SECRET not in out + err and TOKEN not in out + err and "12345678901234" not in out + err
    assert "half.access_key_id: is missing while secret_access_key is set" in out
    assert "typed.secret_access_key: '****' is not a string" in out
    assert "typo.secret_acess_key: is not a known field" in out and "did you mean 'secret_access_key'" in out
    for name in ("half", "typed", "typo"):
        code, _, err = run(capsys, "--config", path, "config", "show", name)
        assert code == EXIT_FAILED and SECRET not in err and "12345678901234" not in err
        with pytest.raises(Exception) as info:
            ConfigManager(path).get_config(name)
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)
        # no chained pydantic error (whose text would carry the input) travels with it
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


# ----------------------------------------------------------------------------------------- auth


def test_auth_describes_each_mode(
    capsys: pytest.CaptureFixture[str], secret_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "config", "auth")
    assert code == 0 and "method: default credential chain" in out
    code, out, _ = run(capsys, "config", "auth", "--config", secret_file, "prod")
    assert "method: temporary credentials (access_key_id AKIA…MPLE" in out and "region: us-east-1" in out
    code, out, _ = run(capsys, "--config", secret_file, "config", "auth", "keys")
    assert "method: access keys" in out
    code, out, _ = run(capsys, "-E", "education", "config", "auth")
    assert "environment: education" in out
    monkeypatch.setenv("AWS_PROFILE", "dev")
    code, out, _ = run(capsys, "config", "auth")
    assert "method: profile 'dev' (from variable AWS_PROFILE)" in out
    assert "warning: profile 'dev' is not in the AWS config or credentials files (known: none)" in out
    code, out, _ = run(capsys, "--config", secret_file, "config", "auth", "keys")
    assert "aws_profile 'dev' (variable AWS_PROFILE) is ignored" in out


@mock_aws
def test_auth_check_with_keys_against_sts(capsys: pytest.CaptureFixture[str], secret_file: str) -> None:
    for name in ("keys", "prod"):
        code, out, err = run(capsys, "--config", secret_file, "config", "auth", name, "--check")
        assert code == 0, err
        assert "check: ok" in out and "account: 123456789012" in out
        assert "arn: arn:aws:sts::123456789012:" in out
        assert SECRET not in out + err and TOKEN not in out + err
        assert "credentials from: explicit" in out


@mock_aws
def test_auth_check_with_a_profile(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[dev]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    path = write(tmp_path / "c.json", {"dev": {"aws_profile": "dev", "region": "eu-west-1"}})
    code, out, err = run(capsys, "--config", path, "config", "auth", "dev", "--check")
    assert code == 0, err
    assert "method: profile 'dev'" in out and "account: 123456789012" in out and "warning" not in out
    assert "credentials from: shared-credentials-file" in out
    assert SECRET not in out + err
    # a profile that does not exist: a configuration error naming it
    monkeypatch.setenv("AWS_PROFILE", "ghost")
    code, out, err = run(capsys, "config", "auth", "--check")
    assert code == EXIT_FAILED and "aws_profile 'ghost' is not defined" in err


@mock_aws
def test_auth_check_with_the_default_chain(capsys: pytest.CaptureFixture[str]) -> None:
    # mock_aws puts fake keys in the environment: the default chain finds them there.
    assert os.environ.get("AWS_ACCESS_KEY_ID")
    code, out, err = run(capsys, "config", "auth", "--check")
    assert code == 0, err
    assert "method: default credential chain" in out and "AWS_ACCESS_KEY_ID in the environment" in out
    assert "credentials from: env" in out and "account: 123456789012" in out


def test_auth_check_without_any_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "config", "auth", "--check")
    assert code == 1
    assert "check: FAILED - no credentials found by the default chain" in err


# ----------------------------------------------------------------------------------------- a real process


def test_exit_statuses_in_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_", "MAX_"))}
    bad = write(tmp_path / "bad.json", {"x": {"max_execution_time": 0}})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ec2_sandbox.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("config", "validate").returncode == 0
    proc = cli("--config", bad, "config", "validate")
    assert proc.returncode == 1 and "x.max_execution_time: 0 is below the minimum 1" in proc.stdout
    proc = cli("--config", bad, "config", "show", "x")
    assert proc.returncode == EXIT_FAILED and "configuration error" in proc.stderr
    env["MAX_MEMORY_MB"] = "huge"
    proc = cli("config", "show")
    assert proc.returncode == EXIT_FAILED and "(from variable MAX_MEMORY_MB)" in proc.stderr
    proc = cli("exec", "-c", "print(1)")
    assert proc.returncode == EXIT_FAILED and "MAX_MEMORY_MB" in proc.stderr


def test_booleans_and_numbers_keep_their_json_types_in_a_file(tmp_path: Path) -> None:
    """One rule: a file's values have their JSON types; text spellings are for variables and --set only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_", "MAX_"))}
    config = write(
        tmp_path / "c.json",
        {"x": {"max_memory_mb": True, "network": "yes", "warm_start": 1, "ssh_sudo": "off"}},
    )

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ec2_sandbox.cli", "--config", config, *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = cli("config", "validate", "x")
    assert proc.returncode == 1
    assert "x.max_memory_mb: True is a boolean, not a whole number" in proc.stdout
    assert "x.network: 'yes' is not true or false" in proc.stdout
    assert "x.warm_start: 1 is not true or false" in proc.stdout
    assert "x.ssh_sudo: 'off' is not true or false" in proc.stdout
    shown = cli("config", "show", "--json", EC2_SANDBOX_NETWORK="yes", EC2_SANDBOX_WARM_START="off")
    fields = json.loads(shown.stdout)["fields"]
    assert fields["network"]["value"] is True and fields["warm_start"]["value"] is False
    bad = cli("config", "show", EC2_SANDBOX_NETWORK="maybe")
    assert bad.returncode == EXIT_FAILED
    assert "default.network: 'maybe' is not true or false (from variable EC2_SANDBOX_NETWORK)" in bad.stderr
