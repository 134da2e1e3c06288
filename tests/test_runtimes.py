"""The built-in runtimes as data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ec2_sandbox.plugins import get_registry
from ec2_sandbox.runtimes import BUILTIN_RUNTIMES, PYTHON3


def test_python_is_python3_under_another_name() -> None:
    registry = get_registry()
    python, python3 = registry.runtimes["python"], registry.runtimes["python3"]
    assert python3 is PYTHON3
    assert python.name == "python" and "same as python3" in python.description
    assert python.to_runner() == {**python3.to_runner(), "name": "python"}
    assert [r.name for r in BUILTIN_RUNTIMES] == ["python3", "python", "node", "bash", "sh"]


def test_an_alias_is_validated_as_any_runtime() -> None:
    with pytest.raises(ValidationError, match="runtime names"):
        PYTHON3.alias("Python 3", "an invalid name")
