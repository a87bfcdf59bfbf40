"""The op inside PyTorch's machinery: torch.compile, FlopCounterMode, torch.export, ONNX, autocast."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from carafe_exp.ops import carafe, carafe_down
from ops.op_cases import random_case


class Reassemble(torch.nn.Module):
    """A module calling the op, as the resamplers do."""

    def __init__(self, down: bool, kernel_size: int = 3, scale: int = 2, groups: int = 2, backend: str | None = None):
        super().__init__()
        self.op = carafe_down if down else carafe
        self.args = (kernel_size, scale, groups)
        self.backend = backend

    def forward(self, features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        return self.op(features, kernels, *self.args, backend=self.backend)


@pytest.mark.parametrize("backend", ["compiled", "reference", None], ids=["compiled", "reference", "default"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_torch_compile_fullgraph(backend: str | None, channels_last: bool, compiled_extension) -> None:
    features, kernels = random_case(2, 4, 5, 7, 3, 2, 2, False, dtype=torch.float32)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)

    def loss(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (Reassemble(False, backend=backend)(x.sin(), w) * 2).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager" if backend == "reference" else "inductor")
    eager_x, compiled_x = features.clone().requires_grad_(), features.clone().requires_grad_()
    expected = loss(eager_x, kernels)
    expected.backward()
    actual = compiled(compiled_x, kernels)
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(compiled_x.grad, eager_x.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_flop_counter_uses_the_registered_formula(down: bool, compiled_extension) -> None:
    features, kernels = random_case(2, 8, 6, 10, 5, 2, 2, down, dtype=torch.float32)
    features.requires_grad_()
    out_pixels = (3 * 5) if down else (12 * 20)
    forward_flops = 2 * 8 * 25 * out_pixels * 2  # 2·C·k² per output pixel, batch 2
    op = carafe_down if down else carafe
    with FlopCounterMode(display=False) as counter:
        out = op(features, kernels, 5, 2, 2, backend="compiled")
    assert counter.get_total_flops() == forward_flops
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * forward_flops


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_torch_export(down: bool, compiled_extension) -> None:
    features, kernels = random_case(1, 4, 5, 6, 3, 2, 2, down, dtype=torch.float32)
    module = Reassemble(down)
    program = torch.export.export(module, (features, kernels))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.carafe_exp.reassemble.default in targets
    other_features, other_kernels = random_case(1, 4, 5, 6, 3, 2, 2, down, dtype=torch.float32)
    torch.testing.assert_close(program.module()(other_features, other_kernels), module(other_features, other_kernels))


@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
def test_onnx_export_runs_in_onnxruntime(down: bool, tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    features, kernels = random_case(2, 4, 5, 7, 3, 2, 2, down, dtype=torch.float32)
    module = Reassemble(down).eval()
    path = tmp_path / "carafe.onnx"
    program = torch.onnx.export(module, (features, kernels), dynamo=True, verbose=False)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    other_features, other_kernels = random_case(2, 4, 5, 7, 3, 2, 2, down, dtype=torch.float32)
    (result,) = session.run(None, {names[0]: other_features.numpy(), names[1]: other_kernels.numpy()})
    torch.testing.assert_close(torch.from_numpy(result), module(other_features, other_kernels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_autocast_runs_in_the_promoted_dtype(backend: str, compiled_extension) -> None:
    features, kernels = random_case(1, 4, 4, 4, 3, 2, 1, False, dtype=torch.float32)
    conv = torch.nn.Conv2d(4, 4, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_features = conv(features)  # bfloat16 under autocast
        assert low_features.dtype == torch.bfloat16
        out = carafe(low_features, kernels, 3, 2, backend=backend)
    assert out.dtype == torch.float32
    expected = carafe(low_features.float(), kernels, 3, 2, backend="reference")
    torch.testing.assert_close(out, expected)
    with pytest.raises(TypeError, match="same dtype"):
        carafe(low_features, kernels, 3, 2, backend=backend)  # outside autocast: an error


def test_torch_export_with_dynamic_sizes_of_the_downsampler(compiled_extension) -> None:
    """CARAFE++ downsampling exports with symbolic H, W: the op's ⌈H/s⌉ must be the encoder conv's own
    expression, else the kernel-shape check is a guard torch.export cannot prove ("Constraints violated")."""
    from carafe_exp.resample import build_downsampler

    module = build_downsampler("carafe", 8, 2, backend="compiled").eval()
    height, width = torch.export.Dim("height", min=3, max=64), torch.export.Dim("width", min=3, max=64)
    program = torch.export.export(module, (torch.randn(1, 8, 6, 8),), dynamic_shapes={"x": {2: height, 3: width}})
    for size in ((7, 9), (10, 5)):
        features = torch.randn(1, 8, *size)
        torch.testing.assert_close(program.module()(features), module(features))
