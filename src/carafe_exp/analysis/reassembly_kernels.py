"""The reassembly kernels a trained network applies, and the input region each output reads.

:func:`capture_kernels` runs a forward pass with hooks on every CARAFE / CARAFE++ module and
keeps, per module, its input size and its normalised kernels (the predictor's output, exactly
what ``carafe_exp.ops`` consumes). Geometry follows the operator (DESIGN.md): an upsampling
output (y, x) reads the k×k neighbourhood of input (⌊y/s⌋, ⌊x/s⌋), a downsampling output reads
the one of input (s·y, s·x); taps outside the map contribute nothing.

:func:`accumulate` follows a chain of upsamplers (the FPN's top-down pathway, CARAFE Fig. 1 and
5): the weights one output location gives to the positions of the coarser map, each of which is
itself a reassembly of the next coarser map, and so on, so the region reassembled into one P2
location shows on every coarser level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class CapturedKernels:
    """One CARAFE module's kernels from one forward pass (batch element 0)."""

    name: str
    direction: str          # "up" or "down"
    scale: int
    kernel_size: int
    groups: int
    input_size: tuple[int, int]
    kernels: torch.Tensor   # (groups·k², H_out, W_out), normalised

    @property
    def output_size(self) -> tuple[int, int]:
        return int(self.kernels.shape[-2]), int(self.kernels.shape[-1])

    def source(self, y: int, x: int) -> tuple[int, int]:
        """The input position the output (y, x) is centred on."""
        if self.direction == "up":
            return y // self.scale, x // self.scale
        return y * self.scale, x * self.scale

    def kernel_at(self, y: int, x: int) -> torch.Tensor:
        """The k×k kernel of output (y, x), averaged over channel groups."""
        k = self.kernel_size
        taps = self.kernels[:, y, x].reshape(self.groups, k, k)
        return taps.mean(dim=0)

    def region(self, y: int, x: int) -> dict[tuple[int, int], float]:
        """``{input position: weight}`` that output (y, x) reassembles (positions inside the map only)."""
        r = self.kernel_size // 2
        cy, cx = self.source(y, x)
        kernel = self.kernel_at(y, x)
        height, width = self.input_size
        weights: dict[tuple[int, int], float] = {}
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                sy, sx = cy + dy, cx + dx
                if 0 <= sy < height and 0 <= sx < width:
                    weights[(sy, sx)] = float(kernel[dy + r, dx + r])
        return weights


def carafe_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every CARAFE upsampler and CARAFE++ downsampler in ``model``, in registration order."""
    found = []
    for name, module in model.named_modules():
        predictor = getattr(module, "kernel_predictor", None)
        if predictor is not None and hasattr(predictor, "direction") and hasattr(module, "kernel_size"):
            found.append((name, module))
    return found


def capture_kernels(model: nn.Module, forward: Callable[[], Any]) -> list[CapturedKernels]:
    """Run ``forward()`` (which calls ``model``) and return the kernels of every CARAFE module it used."""
    captured: list[CapturedKernels] = []
    handles = []

    def hook_for(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(predictor: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            captured.append(CapturedKernels(
                name=name, direction=predictor.direction, scale=int(predictor.scale),
                kernel_size=int(module.kernel_size), groups=int(getattr(module, "groups", 1)),
                input_size=(int(inputs[0].shape[-2]), int(inputs[0].shape[-1])),
                kernels=output[0].detach().float().cpu()))
        return hook

    for name, module in carafe_modules(model):
        handles.append(module.kernel_predictor.register_forward_hook(hook_for(name, module)))
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return captured


def accumulate(chain: Sequence[CapturedKernels], y: int, x: int) -> list[dict[tuple[int, int], float]]:
    """Regions reassembled into output (y, x) of ``chain[-1]``, traced back through every module.

    ``chain`` runs from the coarsest upsampler to the finest, each module's output being the map
    the next one reads (the FPN's top-down maps). Returns one ``{position: weight}`` per module,
    over that module's input map, finest first.
    """
    regions = []
    current = chain[-1].region(y, x)
    regions.append(current)
    for coarser in reversed(chain[:-1]):
        out_h, out_w = coarser.output_size
        accumulated: dict[tuple[int, int], float] = {}
        for (py, px), weight in current.items():
            if not (0 <= py < out_h and 0 <= px < out_w) or weight == 0.0:
                continue
            for position, tap in coarser.region(py, px).items():
                accumulated[position] = accumulated.get(position, 0.0) + weight * tap
        current = accumulated
        regions.append(current)
    return regions


__all__ = ["CapturedKernels", "accumulate", "capture_kernels", "carafe_modules"]
