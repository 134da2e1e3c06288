"""Cleanup policies choose what to delete from the target's inventory; the runner deletes it.

A policy only decides. It never touches the target, so it cannot reach outside the base dir: the runner
accepts nothing but task hashes and session ids to remove.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel

from .config import SandboxConfig


class InventoryEntry(BaseModel):
    kind: Literal["task", "session", "run"]
    id: str
    mtime: float
    session_id: str | None = None
    bytes: int | None = None


class Inventory(BaseModel):
    base_dir: str
    now: float
    entries: list[InventoryEntry]
    #: Targets that did not answer (a fleet's members, by instance id, with why): none of their entries is
    #: in ``entries``.
    unreached: dict[str, str] = {}


class CleanupPolicy(Protocol):
    name: str
    #: Whether ``select`` needs each entry's size (costs a walk of every dir).
    needs_sizes: bool

    def select(self, inventory: Inventory, hours: float, config: SandboxConfig) -> list[InventoryEntry]: ...


class AgePolicy:
    """Remove tasks, sessions and run records last used more than ``hours`` ago."""

    name = "age"
    needs_sizes = False

    def select(self, inventory: Inventory, hours: float, config: SandboxConfig) -> list[InventoryEntry]:
        cutoff = inventory.now - hours * 3600
        return [e for e in inventory.entries if e.mtime < cutoff]
