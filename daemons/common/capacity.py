"""Instance types and capacities: the seed's (cores, memory, disk), shared by the NC
(what one host offers), the CC (how many of a type fit a cluster) and the CLC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmType:
    """What one instance may use."""

    name: str
    cores: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class Capacity:
    cores: int
    memory_mb: int
    disk_gb: int

    def fits(self, vm: VmType) -> bool:
        return self.how_many(vm) >= 1

    def how_many(self, vm: VmType) -> int:
        """How many instances of ``vm`` fit at once (0 when any dimension is short)."""
        return max(
            0,
            min(self.cores // vm.cores, self.memory_mb // vm.memory_mb, self.disk_gb // vm.disk_gb),
        )

    def minus(self, vm: VmType) -> Capacity:
        return Capacity(
            self.cores - vm.cores, self.memory_mb - vm.memory_mb, self.disk_gb - vm.disk_gb
        )

    def load(self, most: Capacity) -> float:
        """The fullest dimension's used share of ``most`` (0 empty, 1 full)."""
        shares = [
            1 - free / total
            for free, total in (
                (self.cores, most.cores),
                (self.memory_mb, most.memory_mb),
                (self.disk_gb, most.disk_gb),
            )
            if total > 0
        ]
        return max(shares, default=1.0)
