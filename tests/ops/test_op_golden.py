"""mmcv's golden CARAFE vectors (tests/data/mmcv_carafe, produced by mmcv's CUDA op) on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

np = pytest.importorskip("numpy")

from carafe_exp.ops import carafe  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "mmcv_carafe"


def _load(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(DATA / name, dtype="<f4").reshape(shape).copy())


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_mmcv_golden_forward_and_gradients(backend: str) -> None:
    features = _load("carafe_feat.bin", (2, 64, 3, 3)).requires_grad_()
    kernels = _load("carafe_mask.bin", (2, 100, 6, 6)).requires_grad_()
    output = carafe(features, kernels, kernel_size=5, scale=2, groups=4, backend=backend)
    output.sum().backward()
    torch.testing.assert_close(output, _load("carafe_output.bin", (2, 64, 6, 6)), atol=1e-3, rtol=0)
    torch.testing.assert_close(features.grad, _load("carafe_feat_grad.bin", (2, 64, 3, 3)), atol=1e-3, rtol=0)
    torch.testing.assert_close(kernels.grad, _load("carafe_mask_grad.bin", (2, 100, 6, 6)), atol=1e-3, rtol=0)
