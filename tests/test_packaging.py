"""The workspace's distributions as built: each wheel carries its package's ``py.typed`` (PEP 561), so a
type checker reads the annotations of an installed ec2-sandbox, adapter or plugin."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_wheel_ships_py_typed(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheels"
    workspace = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]["members"]
    members = [
        m for pattern in workspace for m in sorted(REPO.glob(pattern)) if (m / "pyproject.toml").is_file()
    ]
    packages = {}
    for member in members:
        config = tomllib.loads((member / "pyproject.toml").read_text())
        (package,) = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        packages[config["project"]["name"].replace("-", "_")] = Path(package).name
    assert len(packages) == 7, packages
    subprocess.run(
        [uv, "build", "--all-packages", "--wheel", "-o", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    shipped = {}
    for wheel in tmp_path.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            shipped[wheel.name.split("-")[0]] = sorted(n for n in zf.namelist() if n.endswith("/py.typed"))
    assert shipped == {dist: [f"{package}/py.typed"] for dist, package in packages.items()}
