"""The minimal plugin of docs/plugins.md, built from the guide's own code blocks, must work as documented.

The blocks titled ``pyproject.toml``, ``src/...`` and ``tests/...`` are written to a temp project; the
project is "installed" by a ``*.dist-info`` made from its pyproject's entry points, and its own test file
(which subclasses the core's ConformanceSuite) runs in a pytest subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def build_project(root: Path, prefix: str = "") -> tuple[Path, dict]:
    """The project whose blocks are titled ``{prefix}pyproject.toml``, ``{prefix}src/...``, written to
    ``root``; returns the site dir that "installs" it, and its pyproject's project table."""
    files = {}
    for title, text in BLOCK.findall(DOC.read_text()):
        name = title.removeprefix(prefix)
        if title.startswith(prefix) and (name == "pyproject.toml" or name.startswith(("src/", "tests/"))):
            files[name] = text
    assert {"pyproject.toml", "src", "tests"} == {n.split("/")[0] for n in files}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    site = root / "site"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    eps = project["entry-points"]["ec2_sandbox"]
    (info / "entry_points.txt").write_text(
        "[ec2_sandbox]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
    )
    return site, project


def run_own_tests(root: Path, site: Path, test_file: str) -> subprocess.CompletedProcess[str]:
    """The example project's own tests in a pytest subprocess, the project "installed" from ``site``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(root / "src")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def test_the_guides_minimal_plugin_passes_its_own_tests(tmp_path: Path) -> None:
    site, project = build_project(tmp_path)
    assert project["entry-points"]["ec2_sandbox"] == {"awk": "ec2_sandbox_awk"}
    proc = run_own_tests(tmp_path, site, "tests/test_awk.py")
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 40, proc.stdout[-2000:]  # the conformance suite ran too
    assert "skipped" not in proc.stdout and "failed" not in proc.stdout


def test_the_guides_plugin_is_listed_by_the_cli(tmp_path: Path) -> None:
    site, _ = build_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EC2_SANDBOX", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(tmp_path / "src")])
    env["EC2_SANDBOX_PLUGINS"] = "awk"
    proc = subprocess.run(
        [sys.executable, "-m", "ec2_sandbox.cli", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "awk (ec2-sandbox-awk 0.1.0)\n  hooks: register_runtimes\n  registered: runtime:awk\n" in proc.stdout
    )


def test_the_guides_transport_with_options_and_a_command_passes_its_own_tests(tmp_path: Path) -> None:
    """The second example: an options model (validated, from variables, read by the factory) and a
    command (in --help, run with -E); its own tests run in a pytest subprocess."""
    site, project = build_project(tmp_path, "limited/")
    assert project["entry-points"]["ec2_sandbox"] == {"limited": "ec2_sandbox_limited"}
    proc = run_own_tests(tmp_path, site, "tests/test_limited.py")
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
