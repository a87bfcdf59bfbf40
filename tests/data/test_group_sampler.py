"""Aspect-ratio grouped batches (mmdetection v1's GroupSampler): one orientation per batch, fixed length."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from carafe_exp.data.coco import CocoDataModule
from carafe_exp.data.group_sampler import GroupedBatchSampler, aspect_ratio_groups


def test_groups_are_mmdetections_landscape_flag() -> None:
    # mmdetection v1 CustomDataset._set_group_flag: flag 1 if w / h > 1.
    assert aspect_ratio_groups([(100, 200), (200, 100), (100, 100), (99, 100)]) == [1, 0, 0, 1]


@pytest.mark.parametrize(("size", "batch_size"), [(11, 2), (12, 3), (7, 4), (1, 2)])
def test_batches_hold_one_group_and_cover_the_epoch(size: int, batch_size: int) -> None:
    groups = [i % 3 == 0 for i in range(size)]
    sampler = GroupedBatchSampler(SequentialSampler(range(size)), groups, batch_size)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-size // batch_size)
    assert all(len(batch) == batch_size and len({groups[i] for i in batch}) == 1 for batch in batches)
    seen = Counter(i for batch in batches for i in batch)
    # Leftovers are completed with repeats of their own group; at most one group's few wait a turn.
    assert len(set(range(size)) - set(seen)) < batch_size


def test_sequential_order_gives_the_expected_batches() -> None:
    """Worked by hand: groups a a b a b b a, batch 2 -> [0 1] [2 4] [3 6] then b's leftover 5 + repeat of 2."""
    groups = [0, 0, 1, 0, 1, 1, 0]
    batches = list(GroupedBatchSampler(SequentialSampler(range(7)), groups, 2))
    assert batches == [[0, 1], [2, 4], [3, 6], [5, 2]]


def test_every_rank_gets_as_many_batches_under_a_distributed_sampler() -> None:
    groups = [int(i % 5 == 0) for i in range(23)]
    lengths = set()
    for rank in range(2):
        sampler = DistributedSampler(range(23), num_replicas=2, rank=rank, shuffle=True, seed=0)
        batches = list(GroupedBatchSampler(sampler, groups, 2))
        lengths.add(len(batches))
        assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
    assert lengths == {6}  # ceil(12 / 2) on both ranks: DDP stays in step


def test_shuffled_epochs_differ_but_keep_the_grouping() -> None:
    torch.manual_seed(0)
    groups = [i % 2 for i in range(10)]
    sampler = GroupedBatchSampler(RandomSampler(range(10)), groups, 2)
    first, second = list(sampler), list(sampler)
    assert first != second and len(first) == len(second) == 5
    assert all(len({groups[i] for i in batch}) == 1 for batch in first + second)


def test_the_coco_data_module_groups_its_training_batches(tmp_path: Path) -> None:
    sample = dict(num_train=9, num_val=2, min_side=112, max_side=144, max_objects=2, crowd_prob=0.0, seed=3)
    datamodule = CocoDataModule(tmp_path / "coco", batch_size=2, num_workers=0, sample=sample)
    datamodule.setup("fit")
    dataset = datamodule._dataset(datamodule.train_split, train=True)
    loader = datamodule.train_dataloader()
    assert isinstance(loader.batch_sampler, GroupedBatchSampler)
    landscape = {i: dataset.coco.imgs[image_id]["width"] > dataset.coco.imgs[image_id]["height"]
                 for i, image_id in enumerate(dataset.ids)}
    batches = list(loader.batch_sampler)
    assert len({landscape[i] for i in batches[0]}) == 1 and all(len({landscape[i] for i in b}) == 1 for b in batches)
    assert 0 < sum(landscape.values()) < len(landscape)  # the sample has both orientations
    plain = CocoDataModule(tmp_path / "coco", batch_size=2, num_workers=0, sample=sample, group_by_aspect_ratio=False)
    plain.setup("fit")
    assert not isinstance(plain.train_dataloader().batch_sampler, GroupedBatchSampler)


def test_a_mid_epoch_state_resumes_the_grouped_order_at_the_next_batch() -> None:
    # Issue #20: COCO and ADE20K train with grouped batches; a mid-epoch checkpoint continues the epoch.
    groups = [i % 3 == 0 for i in range(23)]
    torch.manual_seed(5)
    first = GroupedBatchSampler(RandomSampler(range(23)), groups, 2)
    iterator = iter(first)
    trained = [next(iterator) for _ in range(4)]
    state = first.state_dict()
    state["position"] = 4  # what LoaderPosition writes: four batches trained
    rest = list(iterator)
    resumed = GroupedBatchSampler(RandomSampler(range(23)), groups, 2)
    resumed.load_state_dict(state)
    assert list(resumed) == rest and len(trained) + len(rest) == len(first)
