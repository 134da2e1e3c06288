"""ec2_sandbox.testing ships in the core's wheel; what it imports beyond the core comes with the extra."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

import ec2_sandbox.testing

TESTING = Path(ec2_sandbox.testing.__file__).parent


def imported_modules() -> set[str]:
    """Top-level names of every absolute import in ec2_sandbox.testing, at any depth of its code."""
    found = set()
    for path in TESTING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"ec2_sandbox", "__future__"}


def declared(extra: str | None) -> set[str]:
    """Distributions the core requires always (``extra`` None) or with ``extra``, normalised."""
    names = set()
    for line in requires("ec2-sandbox") or []:
        req = Requirement(line)
        env = {"extra": extra or ""}
        if req.marker is None or req.marker.evaluate(env):
            names.add(req.name.lower().replace("_", "-"))
    return names


def test_the_testing_extra_declares_every_import() -> None:
    modules = imported_modules()
    assert {"pytest", "moto"} <= modules  # the check sees the imports it is about
    owners = packages_distributions()
    dists = {owners[m][0].lower().replace("_", "-") for m in modules}
    assert dists - declared("testing") == set()
    assert {"pytest", "pytest-asyncio", "moto"} <= declared("testing") - declared(None)


def test_without_the_extra_the_import_says_how_to_get_it() -> None:
    code = "import sys; sys.modules['moto'] = None; import ec2_sandbox.testing.ssm_standin"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "ec2_sandbox.testing needs moto[server]: pip install 'ec2-sandbox[testing]'" in proc.stderr
