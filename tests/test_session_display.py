"""Rich display in a session's interpreter for the libraries agents use most: matplotlib, pandas, PIL.

They are the target's own packages (Debian: python3-matplotlib, python3-pandas, python3-pil; .ci/run installs
them); a machine without them skips, with the reason.
"""

from __future__ import annotations

import base64
import subprocess
import uuid

import pytest

from ec2_sandbox import AsyncSandbox, SandboxConfig


def system_python_has(module: str) -> bool:
    probe = subprocess.run(["/usr/bin/python3", "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def needs(module: str, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not system_python_has(module), reason=f"{module} is not installed (apt-get install {package})"
    )


@pytest.fixture
async def session(tmp_base_dir: str):  # type: ignore[no-untyped-def]
    async with AsyncSandbox(SandboxConfig(base_sandbox_dir=tmp_base_dir, max_memory_mb=1024)) as sandbox:
        s = sandbox.session("display-" + uuid.uuid4().hex[:8])
        yield s
        await s.close()


@needs("matplotlib", "python3-matplotlib")
async def test_matplotlib_figures_show_as_png(session) -> None:  # type: ignore[no-untyped-def]
    result = await session.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    assert result.success, result
    assert "non-interactive" not in result.stderr, result.stderr
    pngs = [r for r in result.results if "image/png" in r.data]
    assert len(pngs) == 1, result.results
    assert base64.b64decode(pngs[0].data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    # A figure left open at the end of a cell shows too; a figure as the last value shows once.
    left_open = await session.run_code("fig = plt.figure()\nplt.bar([1, 2], [3, 4])\nfig")
    assert sum("image/png" in r.data for r in left_open.results) == 1, left_open.results


@needs("pandas", "python3-pandas")
async def test_pandas_dataframes_show_as_html_and_text(session) -> None:  # type: ignore[no-untyped-def]
    result = await session.run_code("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3, 4]})\ndf")
    assert result.success, result
    (value,) = result.results
    assert value.main and "<table" in value.data["text/html"]
    assert "a  b" in (value.text or "")
    summary = await session.run_code("df.b.sum()")
    assert summary.results[0].text in ("7", "np.int64(7)")


@needs("PIL", "python3-pil")
async def test_pil_images_show_as_png(session) -> None:  # type: ignore[no-untyped-def]
    result = await session.run_code("from PIL import Image\nImage.new('RGB', (4, 4), 'red')")
    assert result.success, result
    (value,) = result.results
    assert base64.b64decode(value.data["image/png"]).startswith(b"\x89PNG")
