"""`ec2-sandbox plugins` and the plugins through the CLI, run as real subprocesses.

Fixture plugins reach the subprocess the way installed plugins do: their ``*.dist-info`` dirs are on its
``PYTHONPATH`` and ``importlib.metadata`` finds their entry points there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_fixtures import FIXTURES, install

EXE = [sys.executable, "-m", "ec2_sandbox.cli"]


@pytest.fixture
def env(tmp_base_dir: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    clean["EC2_SANDBOX_BASE_SANDBOX_DIR"] = tmp_base_dir
    return clean


def with_fixtures(env: dict[str, str], tmp_path: Path, names: list[str] | None = None) -> dict[str, str]:
    site = install(tmp_path / "site", names)
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), str(FIXTURES.parent)])}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], env=env, capture_output=True, text=True, timeout=120)


def test_plugins_lists_name_version_hooks_and_registrations(env: dict[str, str]) -> None:
    proc = cli(env, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "perl (ec2-sandbox-perl 0.1.0)\n  hooks: register_runtimes\n  registered: runtime:perl\n" in out
    assert (
        "keep-newest (ec2-sandbox-keep-newest 0.1.0)\n  hooks: register_cleanup_policies\n"
        "  registered: cleanup_policy:keep-newest\n"
    ) in out
    assert out.startswith("ec2_sandbox.builtins (ec2-sandbox ")
    assert "not loaded" not in out


def test_plugins_json(env: dict[str, str]) -> None:
    proc = cli(env, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["perl"] == {
        "name": "perl",
        "version": "0.1.0",
        "hooks": ["register_runtimes"],
        "registered": ["runtime:perl"],
        "builtin": False,
        "dist": "ec2-sandbox-perl",
        "value": "ec2_sandbox_perl",
    }
    assert by_name["ec2_sandbox.builtins"]["builtin"] is True
    assert data["errors"] == [] and data["disabled"] == []


def test_plugins_with_broken_plugins_lists_the_good_and_fails(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(with_fixtures(env, tmp_path), "plugins")
    assert proc.returncode == 1
    assert "good (ec2sb-fixture-good 1.2.3)" in proc.stdout
    assert "perl (ec2-sandbox-perl 0.1.0)" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    for plugin in ("import-error", "raises", "malformed", "unknown-hook", "no-hooks", "bad-signature"):
        assert any(f"plugin {plugin!r}" in line for line in errors), plugin
    assert any(line.startswith("error: conflict: plugin 'zz-conflict'") for line in errors)


def test_plugins_selection_by_environment_variable(env: dict[str, str], tmp_path: Path) -> None:
    fixture_env = with_fixtures(env, tmp_path)
    proc = cli({**fixture_env, "EC2_SANDBOX_PLUGINS": ""}, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^(\S+) \(", proc.stdout, re.M) == ["ec2_sandbox.builtins"]
    assert "not loaded (EC2_SANDBOX_PLUGINS): " in proc.stdout and "keep-newest" in proc.stdout
    proc = cli({**fixture_env, "EC2_SANDBOX_PLUGINS": "perl,good"}, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^(\S+) \(", proc.stdout, re.M) == ["ec2_sandbox.builtins", "good", "perl"]


def test_exec_and_status_with_the_perl_plugin(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("3\n4\n")
    code = (
        'open my $f, "<", "in.txt" or die; my $s = 0; $s += $_ while <$f>; print "$ENV{LABEL}=$s\\n"; exit 5;'
    )
    proc = cli(env, "exec", "-r", "perl", "--file", f"in.txt={data}", "--env", "LABEL=sum", "-c", code)
    assert (proc.returncode, proc.stdout) == (5, "sum=7\n"), proc.stderr
    proc = cli(env, "status", "--json")
    runtimes = {r["name"]: r for r in json.loads(proc.stdout)["runtimes"]}
    assert runtimes["perl"]["available"] and runtimes["perl"]["version"].startswith("perl v5.")
    text = cli(env, "status").stdout
    assert re.search(r"runtime perl +perl v5\.\d+\.\d+", text), text


def test_exec_refuses_perl_when_the_plugin_is_not_loaded(env: dict[str, str]) -> None:
    proc = cli({**env, "EC2_SANDBOX_PLUGINS": ""}, "exec", "-r", "perl", "-c", 'print "x"')
    assert proc.returncode == 125  # ec2-sandbox's own failure, not a status of the program
    assert "'perl' is unknown" in proc.stderr
