"""The adapter tests' shared fixtures, for the tests of all adapters together."""

from support.adapter_fixtures import *  # noqa: F403
