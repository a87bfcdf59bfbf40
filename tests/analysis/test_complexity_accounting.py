"""FLOPs and parameter accounting: closed forms, CARAFE's formula, Table 2, whole models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carafe_exp.analysis.complexity import (
    carafe_flops_formula,
    downsampler_cost,
    main,
    matches_paper,
    model_cost,
    table2_rows,
    upsampler_cost,
)
from carafe_exp.analysis.paper_numbers import TABLE2
from carafe_exp.resample import build_upsampler


@pytest.mark.parametrize(("k_up", "k_encoder", "c_m", "scale"),
                         [(5, 3, 64, 2), (3, 1, 16, 2), (7, 5, None, 2), (5, 3, 32, 4)])
def test_carafe_flops_equal_the_papers_formula_exactly(k_up: int, k_encoder: int, c_m: int | None,
                                                       scale: int) -> None:
    cost = upsampler_cost("carafe", 256, scale, k_up=k_up, k_encoder=k_encoder, c_m=c_m)
    assert cost["flops"] == carafe_flops_formula(256, c_m, k_encoder, k_up, scale)


def test_carafe_default_is_the_papers_199k_and_74k() -> None:
    assert carafe_flops_formula() == 32_896 + 115_400 + 51_200 == 199_496
    assert upsampler_cost("carafe") == {"flops": 199_496, "params": 74_148}


@pytest.mark.parametrize("channels", [256, 48])
@pytest.mark.parametrize("scale", [2, 3])
def test_baseline_flops_equal_closed_forms(channels: int, scale: int) -> None:
    c, outputs = channels, scale * scale  # outputs per input pixel
    conv3x3 = 2 * (9 * c + 1) * c  # per output pixel, bias included
    expected = {
        "nearest": 0,
        "bilinear": 8 * outputs * c,
        "nearest_conv": outputs * conv3x3,
        "bilinear_conv": 8 * outputs * c + outputs * conv3x3,
        "deconv": 2 * 9 * c * c + 2 * outputs * c,  # the bias is added at every output pixel
        "pixel_shuffle": 2 * (9 * c + 1) * c * outputs,
        "gum": outputs * (2 * 2 * (c + 1) * c + 2 * (c + 1) * 2) + 2 * 8 * outputs * c,
        "spatial_attention": 8 * outputs * c + outputs * 2 * (9 * c + 1) + outputs * c,
        "dysample": 2 * (c + 1) * 2 * 4 * outputs + 8 * outputs * c,
    }
    for name, flops in expected.items():
        assert upsampler_cost(name, c, scale)["flops"] == flops, name


def test_downsampler_flops_per_output_pixel() -> None:
    c, s = 64, 2
    assert downsampler_cost("conv", c, s)["flops"] == 2 * (9 * c + 1) * c
    assert downsampler_cost("avgpool", c, s)["flops"] == 9 * c
    assert downsampler_cost("maxpool", c, s)["flops"] == 0
    # CARAFE++: bias-free compressor on s² input pixels, strided encoder, reassembly 2·C·k².
    expected = s * s * 2 * c * 16 + 2 * (16 * 9 + 1) * 25 + 2 * c * 25
    assert downsampler_cost("carafe", c, s)["flops"] == expected


def test_every_table2_row_matches_the_paper() -> None:
    rows = {row["key"]: row for row in table2_rows()}
    for entry in TABLE2:
        row = rows[entry.registry_key]
        assert matches_paper(row["flops"], entry.flops), (entry.label, row["flops"], entry.flops)
        assert matches_paper(row["params"], entry.params), (entry.label, row["params"], entry.params)


def test_matches_paper_uses_the_papers_precision() -> None:
    assert matches_paper(4_720_640, "4.7M") and not matches_paper(4_800_000, "4.7M")
    assert matches_paper(8_192, "8k") and not matches_paper(9_000, "8k")
    assert matches_paper(0, "0") and not matches_paper(1, "0")
    assert matches_paper(2_305, "2.3k") and matches_paper(1_180_160, "1180k")


def test_model_cost_sums_its_parts_and_restores_the_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), build_upsampler("carafe", 16, 2))
    model.train()
    cost = model_cost(model, torch.randn(2, 3, 6, 5))
    conv_flops = 2 * (27 + 1) * 16 * 30 * 2
    carafe_flops = carafe_flops_formula(16, 64, 3, 5, 2) * 30 * 2
    assert cost["flops"] == conv_flops + carafe_flops
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert torch.count_nonzero(model[1].running_mean) == 0  # evaluated in eval mode: BN stats untouched


def test_model_cost_counts_linear_layers_with_their_bias() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert model_cost(model, torch.randn(3, 3, 2, 2)) == {"flops": 3 * (2 * 12 * 5 + 2 * 5), "params": 12 * 5 + 5}


def test_cli_prints_table2_beside_the_paper(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--channels", "256", "--scale", "2"])
    printed = capsys.readouterr().out
    for text in ("CARAFE", "199,496", "199k", "74,148", "4.7M", "GUM", "dysample", "lip"):
        assert text in printed
    assert "✗" not in printed
