"""The adapter tests' shared fixtures (a local sandbox with a plugin's runtime) for every adapters/*/tests."""

from support.adapter_fixtures import *  # noqa: F403
