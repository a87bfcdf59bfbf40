"""L1 (%) and PSNR (dB) over the hole and the whole image, against hand-computed values; 2 DDP ranks = 1."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from carafe_exp.metrics.inpainting import InpaintingMetrics, l1_percent, psnr_db


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2×2 images: the hole is the left column; errors 0.1 (image 0) and 0.2/0.0 (image 1) there, 0.05 elsewhere."""
    target = torch.full((2, 3, 2, 2), 0.5)
    completed = target.clone()
    hole = torch.zeros(2, 1, 2, 2)
    hole[:, :, :, 0] = 1
    completed[0, :, :, 0] += 0.1
    completed[1, :, 0, 0] += 0.2
    completed[:, :, :, 1] += 0.05  # valid pixels differ too: only the whole-image metrics see them
    return completed, target, hole


def test_hand_computed_values() -> None:
    completed, target, hole = _pair()
    # Image 0: hole |err| 0.1 everywhere -> 10 %, MSE 0.01 -> 20 dB.
    # Image 1: hole errors 0.2 and 0 -> 10 %, MSE (0.04 + 0) / 2 = 0.02 -> 10·log10(50) dB.
    assert l1_percent(completed, target, hole).tolist() == pytest.approx([10.0, 10.0])
    assert psnr_db(completed, target, hole).tolist() == pytest.approx([20.0, 10 * math.log10(50)])
    # Whole image 0: (2·0.1 + 2·0.05) / 4 = 0.075 -> 7.5 %; MSE (2·0.01 + 2·0.0025) / 4 = 0.00625.
    assert l1_percent(completed, target)[0].item() == pytest.approx(7.5)
    assert psnr_db(completed, target)[0].item() == pytest.approx(10 * math.log10(1 / 0.00625))

    metric = InpaintingMetrics()
    metric.update(completed, target, hole, torch.tensor([0, 1]))
    values = metric.compute()
    assert values["L1"].item() == pytest.approx(10.0)
    assert values["PSNR"].item() == pytest.approx((20.0 + 10 * math.log10(50)) / 2)  # mean of per-image PSNR
    assert values["L1_whole"].item() == pytest.approx((7.5 + (0.2 + 0.1) / 4 * 100) / 2)
    # PSNR_whole as mmagic: 8-bit images. Image 0: 0.5 -> 128, 0.6 -> 153, 0.55 -> 140 (of 255):
    # errors 25 (hole) and 12 (valid) levels. Image 1: 0.7 -> 178 (50 levels), 0.5 exact, 0.55 -> 140.
    mse_0 = (2 * 25 ** 2 + 2 * 12 ** 2) / 4 / 255 ** 2
    mse_1 = (50 ** 2 + 0 + 2 * 12 ** 2) / 4 / 255 ** 2
    assert values["PSNR_whole"].item() == pytest.approx((10 * math.log10(1 / mse_0) + 10 * math.log10(1 / mse_1)) / 2)


def test_signed_reading_and_hole_area_by_hand() -> None:
    """Issue #19 §3: the hole metrics of the same images in [−1, 1] (peak 1) beside ours, and the hole share."""
    completed, target, hole = _pair()
    metric = InpaintingMetrics()
    metric.update(completed, target, hole, torch.tensor([0, 1]))
    values = metric.compute()
    signed_completed, signed_target = completed * 2 - 1, target * 2 - 1
    # Image 0: |err| 0.2 in [-1, 1] -> 20 %, MSE 0.04 -> 10·log10(25) dB; image 1: 0.4 and 0 -> 20 %, MSE 0.08.
    assert values["L1_signed"].item() == pytest.approx(20.0)
    assert values["L1_signed"].item() == pytest.approx(l1_percent(signed_completed, signed_target, hole).mean().item())
    assert values["PSNR_signed"].item() == pytest.approx((10 * math.log10(25) + 10 * math.log10(1 / 0.08)) / 2)
    assert values["PSNR_signed"].item() == pytest.approx(values["PSNR"].item() - 6.0206, abs=1e-4)
    assert values["hole_area"].item() == pytest.approx(50.0)  # the left column of 2×2 images


def test_repeated_indices_count_once_and_holeless_images_skip_the_hole_average() -> None:
    completed, target, hole = _pair()
    metric = InpaintingMetrics()
    metric.update(completed, target, hole, torch.tensor([0, 1]))
    metric.update(completed[:1] + 0.3, target[:1], hole[:1], torch.tensor([0]))  # a padded repeat: ignored
    no_hole = torch.zeros(1, 1, 2, 2)
    metric.update(completed[:1], target[:1], no_hole, torch.tensor([2]))
    values = metric.compute()
    assert values["L1"].item() == pytest.approx(10.0)  # images 0 and 1 only
    assert values["L1_whole"].item() == pytest.approx((7.5 + 7.5 + 7.5) / 3)


def test_exact_completion_is_finite_and_sub_level_errors_vanish_in_8_bits() -> None:
    _, target, hole = _pair()
    assert psnr_db(target, target, hole).tolist() == pytest.approx([100.0, 100.0])
    metric = InpaintingMetrics()
    metric.update(target + 0.3 / 255, target, hole)  # less than half an 8-bit level everywhere
    values = metric.compute()
    assert values["PSNR_whole"].item() == pytest.approx(100.0)
    assert values["PSNR"].item() == pytest.approx(10 * math.log10(255 ** 2 / 0.09))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _images(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(count, 3, 8, 8, generator=generator)
    completed = (target + 0.2 * torch.randn(count, 3, 8, 8, generator=generator)).clamp(0, 1)
    hole = (torch.rand(count, 1, 8, 8, generator=generator) > 0.6).float()
    return completed, target, hole


def _rank_worker(rank: int, world: int, port: int, queue: "mp.Queue") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        completed, target, hole = _images(5)
        # DistributedSampler(shuffle=False) with 5 images on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets
        # 1, 3 and the padding repeat of 0.
        indices = [0, 2, 4] if rank == 0 else [1, 3, 0]
        metric = InpaintingMetrics()
        for index in indices:
            metric.update(completed[index:index + 1], target[index:index + 1], hole[index:index + 1],
                          torch.tensor([index]))
        queue.put((rank, {k: v.item() for k, v in metric.compute().items()}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_report_what_one_process_reports() -> None:
    completed, target, hole = _images(5)
    single = InpaintingMetrics()
    single.update(completed, target, hole, torch.arange(5))
    expected = {k: v.item() for k, v in single.compute().items()}

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank_worker, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected, rel=1e-12), (rank, results[rank], expected)
