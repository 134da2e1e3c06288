"""Exceptions the toolkit raises. Each message says what was wrong and what to do about it."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every error ec2-sandbox raises on purpose."""


class InvalidInputError(SandboxError, ValueError):
    """A request was refused before anything ran: the message names the field and the rule."""


class TaskNotFoundError(SandboxError, LookupError):
    """The task hash (or a file in it) does not exist on the target."""


class ConfigError(SandboxError, ValueError):
    """The configuration is invalid; the message lists every problem found."""


class TransportError(SandboxError):
    """The target could not be reached or did not answer as expected."""


class PluginError(SandboxError):
    """A plugin failed to load or returned something malformed; the message names plugin and hook."""
