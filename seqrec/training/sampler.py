"""The training order: a shuffle that is a pure function of (seed, epoch).

Mid-epoch resume skips the batches already consumed (accelerate's `skip_first_batches`), which
is only correct if the resumed run draws exactly the same order as the interrupted one. Deriving
the permutation from (seed, epoch) alone, not from a generator's running state, guarantees that,
and every rank draws the same permutation, which accelerate then deals out batch by batch.
"""

from __future__ import annotations

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
