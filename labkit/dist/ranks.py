"""The trainer's view of the other processes of a distributed run: which share of each batch is its own, and
the figures all processes agree on (the global batch's loss, accuracy over the whole test set). One process
is rank 0 of 1 and every operation is the identity, so the trainer reads the same either way."""
from __future__ import annotations

import torch
import torch.distributed as dist


class Ranks:
    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        # Each rank's data and compute seconds over the timed intervals (as the run's data_time_s and
        # compute_time_s), and DDP's all-reduce seconds per step (distributed runs only).
        self.times = [{"rank": r, "data_s": 0.0, "compute_s": 0.0, "allreduce_s_per_step": None}
                      for r in range(world)]

    @classmethod
    def current(cls) -> "Ranks":
        """This process's place in the initialised process group (labkit.dist.worker), else rank 0 of 1."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items (equal shares when n divides by the world size)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def log(self, losses: list[float], data_s: float, compute_s: float, allreduce_s: float | None,
            timed: bool) -> list[float]:
        """At a logged point: every rank's losses and times in one collective (the times are kept when the
        interval is `timed`). Returns the global batch's losses (the mean of the ranks' equal shares), the same
        on every rank, so all stop together at a NaN."""
        if self.world == 1:
            return losses
        mine = torch.tensor([*losses, data_s, compute_s, -1.0 if allreduce_s is None else allreduce_s],
                            dtype=torch.float64)
        mine = mine.cuda() if dist.get_backend() == "nccl" else mine  # the rank's GPU: the worker set it current
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        rows = torch.stack(every).cpu()
        for times, row in zip(self.times, rows.tolist()):
            if timed:
                times["data_s"] += row[-3]
                times["compute_s"] += row[-2]
            times["allreduce_s_per_step"] = row[-1] if row[-1] >= 0 else None
        return rows[:, :len(losses)].mean(dim=0).tolist()
