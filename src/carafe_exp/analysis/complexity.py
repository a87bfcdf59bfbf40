"""FLOPs and parameter counts of resamplers and whole models, under the CARAFE papers' convention.

Convention (CARAFE §5.3, its ref. [25]): a multiply-add is 2 FLOPs and a bias counts as one more
multiply-add per output element, so a k×k conv C_in→C_out costs 2(k²C_in + 1)C_out per output
pixel. FLOPs are measured, not derived: one forward pass runs under ``FlopCounterMode`` with
these formulas added to PyTorch's own (which ignore biases, interpolation and sampling):

- convolution / transposed convolution: PyTorch's count plus 2 per output element for the bias;
- bilinear interpolation and bilinear ``grid_sample``: 4 multiply-adds = 8 per output element
  (this reproduces Table 2's 8k for bilinear ×2 at C=256); nearest: 0;
- average pooling: k² per output element (k²−1 additions and a division); max pooling: 0;
- linear layers (addmm): 2·in·out per row plus 2 per output for the bias;
- products of two feature-sized tensors (attention rescaling, LIP/DPP weighting): 1 per output element;
- the reassembly op: the formula ``carafe_exp.ops`` registers, 2·C·k² per output pixel.

Activations, normalisers (softmax, BN, IN) and elementwise scaling by constants are not counted,
as in the papers. ``upsampler_cost`` reports FLOPs per input pixel, ``downsampler_cost`` per
output pixel; ``python -m carafe_exp.analysis.complexity`` prints Table 2 beside the paper.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from carafe_exp.analysis.paper_numbers import TABLE2, TABLE2_CHANNELS, TABLE2_SCALE
from carafe_exp.errors import UserInputError
from carafe_exp.resample import DOWNSAMPLERS, UPSAMPLERS, build_downsampler, build_upsampler
from carafe_exp.resample.guided import requires_guide

aten = torch.ops.aten
logger = logging.getLogger(__name__)

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


def _addmm_with_bias(bias_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # nn.Linear: 2·in·out per row for the matrix product, plus the bias as one more multiply-add.
    return 2 * a_shape[0] * a_shape[1] * b_shape[1] + 2 * _numel(out_shape)


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
        aten.addmm: _addmm_with_bias,
        aten.mul: _feature_product,
    }


def _warn_if_reassembly_is_decomposed(module: nn.Module) -> None:
    # Only the compiled op reaches FlopCounterMode as one op with its formula; the pure-PyTorch
    # reference is seen as its elementwise pieces, which this convention undercounts.
    from carafe_exp.ops.backend import use_compiled
    from carafe_exp.resample.carafe import CarafeDownsample, CarafeUpsample

    for submodule in module.modules():
        if isinstance(submodule, (CarafeUpsample, CarafeDownsample)) and not use_compiled(submodule.backend):
            logger.warning("CARAFE reassembly runs on the reference backend here; its FLOPs are counted from "
                           "the decomposition and fall short of 2·C·k² per output pixel")
            return


def count_flops(module: nn.Module, *inputs: Any) -> int:
    """Total FLOPs of one forward pass of ``module(*inputs)`` under the papers' convention."""
    _warn_if_reassembly_is_decomposed(module)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def count_params(module: nn.Module) -> int:
    """Number of learnable parameters (buffers such as BN running statistics are not parameters)."""
    return sum(p.numel() for p in module.parameters())


def model_cost(model: nn.Module, example_inputs: Any, *, eval_mode: bool = True) -> dict[str, int]:
    """Total FLOPs and params of ``model`` on ``example_inputs`` (a tensor, or a tuple of positional args).

    The forward runs under ``torch.no_grad()``; with ``eval_mode`` (default) the model is put in
    eval mode for it (so BN statistics are not updated) and each submodule's mode is restored after.
    """
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    modes = {submodule: submodule.training for submodule in model.modules()}
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
    if requires_guide(module):
        # A guided upsampler (×2 only) also reads the high-res guide, here as wide as the input.
        return count_flops(module, probe, torch.randn(1, channels, 2 * height, 2 * width))
    return count_flops(module, probe)


def upsampler_cost(name: str | Mapping[str, Any], channels: int = 256, scale: int = 2,
                   **overrides: Any) -> dict[str, float]:
    """FLOPs per input pixel and params of the upsampler ``name`` (or config mapping) at ``channels``, ``scale``.

    ``name`` may be a registry key, ``module:Class`` or an installed entry point; a guided
    upsampler is measured with a guide of ``channels`` channels.
    """
    module = build_upsampler(name, channels, scale, guide_available=True, **overrides)
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
    """CARAFE §5.3: 2(C+1)C_m + 2(C_m·k_enc²+1)σ²k_up² + 2σ²k_up²·C per input pixel.

    ``c_m=None`` (no compressor) drops the first term and feeds the encoder C channels.
    """
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


def table2_rows(channels: int = TABLE2_CHANNELS, scale: int = TABLE2_SCALE,
                extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Our cost of every Table 2 upsampler (plus the zoo's and the ``extra`` named ones) beside the paper's numbers."""
    rows = []
    for entry in TABLE2:
        cost = upsampler_cost(entry.registry_key, channels, scale)
        rows.append({"label": entry.label, "key": entry.registry_key, "flops": cost["flops"],
                     "params": cost["params"], "paper_flops": entry.flops, "paper_params": entry.params})
    others = sorted(set(UPSAMPLERS) - {e.registry_key for e in TABLE2})
    for key in others + [name for name in extra if name not in others]:
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


# CARAFE Table 8 (c_m; None = no compressor) and Table 9 ((k_encoder, k_up)) settings.
ABLATION_C_M: tuple[int | None, ...] = (16, 32, 64, 128, 256, None)
ABLATION_KERNELS: tuple[tuple[int, int], ...] = ((1, 3), (1, 5), (3, 3), (3, 5), (3, 7), (5, 5), (5, 7), (7, 7))


def carafe_ablation_rows(channels: int = TABLE2_CHANNELS, scale: int = TABLE2_SCALE) -> list[dict[str, Any]]:
    """Measured cost of the CARAFE settings of Tables 8 and 9 beside the §5.3 formula."""
    settings = [{"c_m": c_m} for c_m in ABLATION_C_M]
    settings += [{"k_encoder": k_enc, "k_up": k_up} for k_enc, k_up in ABLATION_KERNELS]
    rows = []
    for overrides in settings:
        full = {"c_m": 64, "k_encoder": 3, "k_up": 5, **overrides}
        cost = upsampler_cost("carafe", channels, scale, **overrides)
        formula = carafe_flops_formula(channels, full["c_m"], full["k_encoder"], full["k_up"], scale)
        rows.append({**full, "flops": cost["flops"], "params": cost["params"], "formula": formula})
    return rows


def _print_tables(channels: int, scale: int, extra: Sequence[str] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    def verdict(value: float, text: str | None) -> str:
        if text is None:
            return ""
        return "[green]✓[/]" if matches_paper(value, text) else "[red]✗[/]"

    def new_table(title: str, columns: Sequence[str]) -> Table:
        table = Table(title=title, min_width=72)
        for column in columns:
            numeric = column not in ("method", "key")
            table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
        return table

    console = Console(width=max(Console().width, 110))
    up = new_table(f"CARAFE Table 2: upsamplers at C={channels}, ×{scale} (FLOPs per input pixel)",
                   ("method", "key", "FLOPs ours", "FLOPs paper", "match", "Params ours", "Params paper", "match"))
    comparable = (channels, scale) == (TABLE2_CHANNELS, TABLE2_SCALE)
    for row in table2_rows(channels, scale, extra):
        if not comparable:  # the paper's numbers are for C=256, ×2 only
            row["paper_flops"] = row["paper_params"] = None
        up.add_row(row["label"], row["key"], format_count(row["flops"]), row["paper_flops"] or "—",
                   verdict(row["flops"], row["paper_flops"]), format_count(row["params"]),
                   row["paper_params"] or "—", verdict(row["params"], row["paper_params"]))
    console.print(up)
    if not comparable:
        console.print(f"[yellow]The paper reports C={TABLE2_CHANNELS}, ×{TABLE2_SCALE} only: no paper column here.[/]")

    ablation = new_table(f"CARAFE Tables 8–9 settings at C={channels}, ×{scale}: measured vs "
                         "2(C+1)C_m + 2(C_m·k_enc²+1)σ²k_up² + 2σ²k_up²·C",
                         ("c_m", "k_encoder", "k_up", "FLOPs measured", "FLOPs formula", "match", "Params"))
    for row in carafe_ablation_rows(channels, scale):
        same = "[green]✓[/]" if row["flops"] == row["formula"] else "[red]✗[/]"
        ablation.add_row("N/A" if row["c_m"] is None else str(row["c_m"]), str(row["k_encoder"]), str(row["k_up"]),
                         format_count(row["flops"]), format_count(row["formula"]), same, format_count(row["params"]))
    console.print(ablation)

    down = new_table(f"Downsamplers of CARAFE++ Table III at C={channels}, ÷{scale} (FLOPs per output pixel; "
                     "the paper reports fps only)", ("key", "FLOPs ours", "Params ours"))
    for row in downsampler_rows(channels, scale):
        down.add_row(row["key"], format_count(row["flops"]), format_count(row["params"]))
    console.print(down)


def main(argv: Sequence[str] | None = None) -> None:
    """Print Table 2's FLOPs and Params columns, ours beside the paper's, and the downsamplers' costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=TABLE2_CHANNELS, help="feature channels C (paper: 256)")
    parser.add_argument("--scale", type=int, default=TABLE2_SCALE, help="resampling factor s (paper: 2)")
    parser.add_argument("--upsampler", action="append", default=[], metavar="NAME",
                        help="also measure this upsampler: module:Class or an installed entry-point name (repeatable)")
    options = parser.parse_args(argv)
    try:
        _print_tables(options.channels, options.scale, options.upsampler)
    except UserInputError as error:
        print(f"complexity: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
