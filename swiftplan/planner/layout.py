"""Which GPUs a plan uses and how it splits them: `Layout`, and the --gpus text of a cluster. Pure."""

from __future__ import annotations

from dataclasses import dataclass, replace

from swiftplan.planner.hardware import Cluster


def cluster_text(cluster: Cluster) -> str:
    """The --gpus string for a cluster of catalog GPUs, e.g. 'rtx4090', '4xa100-80gb-sxm', '2x8xh100-sxm'."""
    acc = cluster.accelerator.id
    if cluster.nodes > 1:
        return f"{cluster.nodes}x{cluster.gpus_per_node}x{acc}"
    return acc if cluster.gpus_per_node == 1 else f"{cluster.gpus_per_node}x{acc}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """How many GPUs a plan uses and how it splits them."""

    gpus: int
    """GPUs used (a divisor of one node, or whole nodes)."""
    tp: int = 1
    """Tensor-parallel degree."""
    pp: int = 1
    """Pipeline-parallel degree."""

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.gpus // (self.tp * self.pp)

    @property
    def key(self) -> str:
        """Stable text form, e.g. '8:tp2:pp1' (the study's categorical value)."""
        return f"{self.gpus}:tp{self.tp}:pp{self.pp}"

    @staticmethod
    def from_key(key: str) -> Layout:
        """Inverse of `key`."""
        gpus, tp, pp = key.split(":")
        return Layout(gpus=int(gpus), tp=int(tp.removeprefix("tp")), pp=int(pp.removeprefix("pp")))

    def sub_cluster(self, cluster: Cluster) -> Cluster:
        """The part of `cluster` this layout runs on."""
        if self.gpus == cluster.world_size:
            return cluster
        if self.gpus <= cluster.gpus_per_node:
            return replace(cluster, gpus_per_node=self.gpus, nodes=1)
        return replace(cluster, nodes=self.gpus // cluster.gpus_per_node)
