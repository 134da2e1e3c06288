"""Plugin registries as a process would load them, whatever the developer's shell has set."""

from __future__ import annotations

import pytest

from ec2_sandbox.plugins import Registry, load_registry


def registry_with(monkeypatch: pytest.MonkeyPatch, selection: str | None) -> Registry:
    """Load the registry with EC2_SANDBOX_PLUGINS set to ``selection``; None unsets it, which loads every
    installed plugin. Either way the shell's own EC2_SANDBOX_PLUGINS cannot change what a test gets."""
    if selection is None:
        monkeypatch.delenv("EC2_SANDBOX_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("EC2_SANDBOX_PLUGINS", selection)
    return load_registry()
