"""The training order: a shuffle that is a pure function of (seed, epoch).

Mid-epoch resume skips the batches already consumed (accelerate's `skip_first_batches`), which
is only correct if the resumed run draws exactly the same order as the interrupted one. Deriving
the permutation from (seed, epoch) alone, not from a generator's running state, guarantees that,
and every rank draws the same permutation, which accelerate then deals out batch by batch.

With several processes and a dataset that says which rank owns each example (``owner_ranks``),
:class:`RankOwnedEpochSampler` gives each rank batches of its own users instead, so a rank only
needs its own users' data (sharded prepared directories).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


class RankOwnedEpochSampler(Sampler[int]):
    """Each rank draws batches of its OWN examples only (several processes).

    `owner[i]` is the rank that owns example i (seqrec/data/shards.py: a function of the user id,
    the same for sharded and unsharded data). Per epoch, rank r shuffles its examples with
    ``default_rng([seed, epoch, r])`` and repeats that order from its start to fill
    ``batches_per_rank * batch_size`` slots, ``batches_per_rank`` being the longest rank's batch
    count: every rank makes the same number of forward calls (DeepSpeed ZeRO-3 gathers parameters
    collectively) and every example is seen at least once per epoch (a rank with fewer examples
    sees some twice, as a DistributedSampler pads). The global order interleaves the ranks'
    batches (rank 0's first batch, rank 1's first batch, ...), which is exactly how accelerate
    deals a loader's batches to processes, so each process receives its own. The order is a pure
    function of (seed, epoch): mid-epoch resume skips batches as with EpochShuffleSampler.
    """

    def __init__(self, owner: np.ndarray, world: int, batch_size: int, seed: int):
        owner = np.asarray(owner)
        self.world, self.batch_size, self.seed = world, batch_size, seed
        self.groups = [np.flatnonzero(owner == r) for r in range(world)]
        empty = [r for r, g in enumerate(self.groups) if len(g) == 0]
        if empty:
            raise ValueError(
                f"rank(s) {empty} of {world} own no training examples ({len(owner)} in all): "
                "use fewer processes for this little data"
            )
        self.batches_per_rank = max(math.ceil(len(g) / batch_size) for g in self.groups)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_order(self, rank: int) -> np.ndarray:
        """[batches_per_rank * batch_size] example indices rank `rank` trains on this epoch."""
        group = self.groups[rank]
        order = group[np.random.default_rng([self.seed, self.epoch, rank]).permutation(len(group))]
        slots = self.batches_per_rank * self.batch_size
        return np.tile(order, math.ceil(slots / len(order)))[:slots]

    def __iter__(self) -> Iterator[int]:
        per_rank = [
            self.rank_order(r).reshape(self.batches_per_rank, self.batch_size) for r in range(self.world)
        ]
        return iter(np.stack(per_rank, axis=1).reshape(-1).tolist())  # [batch, rank, slot]

    def __len__(self) -> int:
        return self.world * self.batches_per_rank * self.batch_size
