"""Test support for ec2-sandbox and for transports and plugins built on it.

Its modules import pytest, pytest-asyncio and moto, which the core does not need: they come with the
``testing`` extra (``pip install 'ec2-sandbox[testing]'``). Without them this says so at import, instead
of an ImportError from deep inside a module.
"""

from importlib.util import find_spec

#: The extra's distributions, by the module each is imported as.
REQUIRES = {"pytest": "pytest", "pytest_asyncio": "pytest-asyncio", "moto": "moto[server]"}

_missing = [dist for module, dist in REQUIRES.items() if find_spec(module) is None]
if _missing:
    raise ImportError(
        f"ec2_sandbox.testing needs {', '.join(_missing)}: pip install 'ec2-sandbox[testing]'",
        name="ec2_sandbox.testing",
    )
