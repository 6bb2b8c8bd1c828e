"""Stand-ins shared by tests of different packages."""
from __future__ import annotations


class FixedLoad:
    """A ``vsrkit.utils.cpu_load.OtherLoad`` on two CPUs whose every reading is ``others`` busy CPUs (None: unknown)."""

    cpus = [0, 1]

    def __init__(self, others: float | None) -> None:
        self.others = others

    def since_last(self) -> float | None:
        return self.others
