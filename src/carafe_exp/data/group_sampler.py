"""Aspect-ratio grouped batches: every training batch holds only landscape or only portrait images.

mmdetection v1 (the CARAFE papers' code) trains with ``GroupSampler``: each image gets the flag
``width / height > 1`` and a batch is drawn from one flag only, so images padded to a common size
waste little padding. This batch sampler does the same on top of any index sampler, including
the ``DistributedSampler`` Lightning puts in under DDP: it walks the sampler's (shuffled) order,
fills one buffer per group and yields a buffer when it holds ``batch_size`` indices.

The number of batches is ``ceil(len(sampler) / batch_size)`` every epoch, as for an ordinary
``BatchSampler`` (so epochs, schedules and DDP ranks stay in step). The leftovers at the end of an
epoch (each group's last, partly filled buffer) are completed with repeats from the same group,
largest first, as torchvision's reference ``GroupedBatchSampler`` does; if there are more
partly filled groups than batches left, the smallest leftovers wait for the next epoch's shuffle.

It is a :class:`~carafe_exp.data.resumable_loader.ResumableBatchSampler`: a mid-epoch checkpoint
resumes the epoch's grouped order at the next batch (with a ``ResumableDataLoader``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

from carafe_exp.data.resumable_loader import ResumableBatchSampler


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """mmdetection v1's flag per image from (height, width): 1 if width / height > 1, else 0."""
    return [1 if width / height > 1 else 0 for height, width in sizes]


class GroupedBatchSampler(ResumableBatchSampler):
    """Batches of ``batch_size`` indices from ``sampler`` whose ``group_ids`` agree (see module docstring)."""

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False) -> None:
        if drop_last:
            raise ValueError("GroupedBatchSampler keeps every batch (drop_last=False)")
        super().__init__(sampler, batch_size, drop_last)
        self.group_ids = list(group_ids)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def draw_batches(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        full_batches = 0
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            seen[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                full_batches += 1
        # ceil(leftovers / batch_size) batches remain, never more than the partly filled groups.
        remaining = len(self) - full_batches
        for group in sorted(buffers, key=lambda g: len(buffers[g]), reverse=True)[:remaining]:
            batch = buffers[group]
            pool = seen[group]
            # Repeat the group's samples of this epoch, in their (shuffled) order.
            batch += [pool[i % len(pool)] for i in range(self.batch_size - len(batch))]
            yield batch


__all__ = ["GroupedBatchSampler", "aspect_ratio_groups"]
