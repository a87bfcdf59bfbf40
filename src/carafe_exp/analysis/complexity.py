"""FLOPs and parameter counts of resamplers and whole models, under the CARAFE papers' convention.

Convention (CARAFE §5.3, its ref. [25]): a multiply-add is 2 FLOPs and a bias counts as one more
multiply-add per output element, so a k×k conv C_in→C_out costs 2(k²C_in + 1)C_out per output
pixel. FLOPs are measured, not derived: one forward pass runs under ``FlopCounterMode`` with
these formulas added to PyTorch's own (which ignore biases, interpolation and sampling):

- convolution / transposed convolution: PyTorch's count plus 2 per output element for the bias;
- bilinear interpolation and bilinear ``grid_sample``: 4 multiply-adds = 8 per output element
  (this reproduces Table 2's 8k for bilinear ×2 at C=256); nearest: 0;
- average pooling: k² per output element (k²−1 additions and a division); max pooling: 0;
- products of two feature-sized tensors (attention rescaling, LIP/DPP weighting): 1 per output element;
- the reassembly op: the formula ``carafe_exp.ops`` registers, 2·C·k² per output pixel.

Activations, normalisers (softmax, BN, IN) and elementwise scaling by constants are not counted,
as in the papers. ``upsampler_cost`` reports FLOPs per input pixel, ``downsampler_cost`` per
output pixel; ``python -m carafe_exp.analysis.complexity`` prints Table 2 beside the paper.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from carafe_exp.analysis.paper_numbers import TABLE2, TABLE2_CHANNELS, TABLE2_SCALE
from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS, build_downsampler, build_upsampler

aten = torch.ops.aten

# Spatial size of the probe input. Every formula above is exact per pixel at any size (borders
# included), so a small map gives the per-pixel cost exactly and fast.
_PROBE_SIZE = 8

_GRID_SAMPLE_FLOPS = {0: 8, 1: 0, 2: 32}  # bilinear: 4 MACs; nearest: none; bicubic: 16 MACs


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _conv_with_bias(x_shape, w_shape, bias, _stride, _padding, _dilation, transposed, *args, out_shape=None,
                    **kwargs) -> int:
    flops = conv_flop_count(x_shape, w_shape, out_shape, transposed=transposed)
    if bias is not None:
        flops += 2 * _numel(out_shape)
    return flops


def _bilinear_upsample(*args, out_shape=None, **kwargs) -> int:
    return 8 * _numel(out_shape)


def _grid_sample(_input, _grid, interpolation_mode, *args, out_shape=None, **kwargs) -> int:
    return _GRID_SAMPLE_FLOPS.get(int(interpolation_mode), 8) * _numel(out_shape)


def _avg_pool(_input, kernel_size, *args, out_shape=None, **kwargs) -> int:
    window = kernel_size if isinstance(kernel_size, Sequence) else (kernel_size, kernel_size)
    if len(window) == 1:
        window = (window[0], window[0])
    return _numel(window) * _numel(out_shape)


def _feature_product(a, b, *args, out_shape=None, **kwargs) -> int:
    # Shapes arrive as torch.Size; scalars (python numbers, 0-d tensors) are scaling by constants: free.
    def is_map(operand: Any) -> bool:
        return isinstance(operand, torch.Size) and len(operand) > 0 and _numel(operand) > 1

    return _numel(out_shape) if is_map(a) and is_map(b) else 0


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """The formulas this module adds to ``FlopCounterMode`` (keys: aten overload packets)."""
    return {
        aten.convolution: _conv_with_bias,
        aten._convolution: _conv_with_bias,
        aten.upsample_bilinear2d: _bilinear_upsample,
        aten.grid_sampler_2d: _grid_sample,
        aten.avg_pool2d: _avg_pool,
        aten.mul: _feature_product,
    }


def count_flops(module: nn.Module, *inputs: Any) -> int:
    """Total FLOPs of one forward pass of ``module(*inputs)`` under the papers' convention."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def count_params(module: nn.Module) -> int:
    """Number of learnable parameters (buffers such as BN running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters())


def _eval_copy_state(module: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def model_cost(model: nn.Module, example_inputs: Any, *, eval_mode: bool = True) -> dict[str, int]:
    """Total FLOPs and params of ``model`` on ``example_inputs`` (a tensor, or a tuple of positional args).

    The forward runs under ``torch.no_grad()``; with ``eval_mode`` (default) the model is put in
    eval mode for it (so BN statistics are not updated) and each submodule's mode is restored after.
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    modes = _eval_copy_state(model)
    if eval_mode:
        model.eval()
    try:
        flops = count_flops(model, *args)
    finally:
        for submodule, training in modes.items():
            submodule.training = training
    return {"flops": flops, "params": count_params(model)}


def _probe(module: nn.Module, channels: int, height: int, width: int) -> int:
    probe = torch.randn(1, channels, height, width)
    module.eval()
    return count_flops(module, probe)


def upsampler_cost(name: str | Mapping[str, Any], channels: int = 256, scale: int = 2,
                   **overrides: Any) -> dict[str, float]:
    """FLOPs per input pixel and params of the upsampler ``name`` (or config mapping) for ``channels``, ``scale``."""
    module = build_upsampler(name, channels, scale, **overrides)
    flops = _probe(module, channels, _PROBE_SIZE, _PROBE_SIZE)
    return {"flops": flops / _PROBE_SIZE**2, "params": count_params(module)}


def downsampler_cost(name: str | Mapping[str, Any], channels: int = 256, scale: int = 2,
                     **overrides: Any) -> dict[str, float]:
    """FLOPs per output pixel and params of the downsampler ``name`` (or config mapping)."""
    module = build_downsampler(name, channels, scale, **overrides)
    flops = _probe(module, channels, _PROBE_SIZE * scale, _PROBE_SIZE * scale)
    return {"flops": flops / _PROBE_SIZE**2, "params": count_params(module)}


def carafe_flops_formula(channels: int = 256, c_m: int | None = 64, k_encoder: int = 3, k_up: int = 5,
                         scale: int = 2) -> int:
    """CARAFE §5.3: 2(C+1)C_m + 2(C_m·k_enc²+1)σ²k_up² + 2σ²k_up²·C per input pixel (no compressor: C_m = C, no first term)."""
    compressor = 0 if c_m is None else 2 * (channels + 1) * c_m
    encoder_in = channels if c_m is None else c_m
    kernels = scale * scale * k_up * k_up
    return compressor + 2 * (encoder_in * k_encoder * k_encoder + 1) * kernels + 2 * kernels * channels


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}


def matches_paper(value: float, text: str) -> bool:
    """Whether ``value`` rounds to the paper's ``text`` ("4.7M", "590k", "0") at the paper's precision."""
    unit = text[-1] if text[-1] in _UNITS and not text[-1].isdigit() else ""
    number = text[: len(text) - len(unit)]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return round(value / _UNITS[unit], decimals) == float(number)


def format_count(value: float) -> str:
    """Exact count with thousands separators (fractional per-pixel values keep one decimal)."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def table2_rows(channels: int = TABLE2_CHANNELS, scale: int = TABLE2_SCALE) -> list[dict[str, Any]]:
    """Our cost of every Table 2 upsampler (plus the zoo's extra upsamplers) beside the paper's numbers."""
    rows = []
    for entry in TABLE2:
        cost = upsampler_cost(entry.registry_key, channels, scale)
        rows.append({"label": entry.label, "key": entry.registry_key, "flops": cost["flops"],
                     "params": cost["params"], "paper_flops": entry.flops, "paper_params": entry.params})
    for key in sorted(set(UPSAMPLERS) - {e.registry_key for e in TABLE2}):
        cost = upsampler_cost(key, channels, scale)
        rows.append({"label": key, "key": key, "flops": cost["flops"], "params": cost["params"],
                     "paper_flops": None, "paper_params": None})
    return rows


def downsampler_rows(channels: int = TABLE2_CHANNELS, scale: int = TABLE2_SCALE) -> list[dict[str, Any]]:
    """Our cost of every downsampler (CARAFE++ Table III reports no FLOPs, so there is no paper column)."""
    rows = []
    for key in sorted(DOWNSAMPLERS):
        cost = downsampler_cost(key, channels, scale)
        rows.append({"key": key, "flops": cost["flops"], "params": cost["params"]})
    return rows


def _print_tables(channels: int, scale: int) -> None:
    from rich.console import Console
    from rich.table import Table

    def verdict(value: float, text: str | None) -> str:
        if text is None:
            return ""
        return "[green]✓[/]" if matches_paper(value, text) else "[red]✗[/]"

    console = Console(width=max(Console().width, 100))
    up = Table(title=f"CARAFE Table 2 — upsamplers, C={channels}, ×{scale}; FLOPs per input pixel")
    for column in ("method", "key", "FLOPs (ours)", "FLOPs (paper)", "", "Params (ours)", "Params (paper)", ""):
        up.add_column(column, justify="left" if column in ("method", "key") else "right")
    for row in table2_rows(channels, scale):
        up.add_row(row["label"], row["key"], format_count(row["flops"]), row["paper_flops"] or "—",
                   verdict(row["flops"], row["paper_flops"]), format_count(row["params"]),
                   row["paper_params"] or "—", verdict(row["params"], row["paper_params"]))
    console.print(up)
    if (channels, scale) != (TABLE2_CHANNELS, TABLE2_SCALE):
        console.print("[yellow]The paper's numbers are for C=256, ×2; the ✓/✗ column compares anyway.[/]")
    console.print(f"CARAFE formula 2(C+1)C_m + 2(C_m·k_enc²+1)σ²k_up² + 2σ²k_up²·C = "
                  f"{carafe_flops_formula(channels, 64, 3, 5, scale):,}")

    down = Table(title=f"Downsamplers (CARAFE++ Table III), C={channels}, ÷{scale}; FLOPs per output pixel")
    for column in ("key", "FLOPs", "Params"):
        down.add_column(column, justify="left" if column == "key" else "right")
    for row in downsampler_rows(channels, scale):
        down.add_row(row["key"], format_count(row["flops"]), format_count(row["params"]))
    console.print(down)


def main(argv: Sequence[str] | None = None) -> None:
    """Print Table 2's FLOPs and Params columns, ours beside the paper's, and the downsamplers' costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=TABLE2_CHANNELS)
    parser.add_argument("--scale", type=int, default=TABLE2_SCALE)
    options = parser.parse_args(argv)
    _print_tables(options.channels, options.scale)


if __name__ == "__main__":
    main()
