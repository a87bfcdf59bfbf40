"""Benchmark of the CARAFE reassembly operator: reference vs compiled vs nearest vs the memory floor.

Cases: the three FPN top-down steps of an 800×1333 image at C=256, batch 2, k=5
(25×42→50×84, 50×84→100×168, 100×168→200×336) and a CARAFE++ downsampling case
(2×64×400×668 → 200×334, k=5, s=2). For each: forward and forward+backward time and peak
extra memory of the pure-PyTorch reference, the compiled extension (on a GPU each of its CUDA
kernel sets, simple, tiled and auto, each held through forward and backward) and F.interpolate
(nearest), the compiled forward into a preallocated output, and the floor: bytes the op must move ÷ the copy bandwidth measured in the
same run. Prints a table and writes JSON (machine described) into benchmarks/results/.

The process's CPU allocator is configured as the ``carafe-exp`` process configures it
(carafe_exp.allocator), so the plain-call numbers are what a training run gets;
``CARAFE_EXP_CPU_ALLOCATOR=system`` measures with glibc's defaults instead.

Needs only torch (no Hydra): run from a checkout with ``python scripts/bench_op.py``.

    python scripts/bench_op.py [--device cpu|cuda] [--repeats 5] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import weakref
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from machine import describe_machine  # scripts/machine.py, beside this script
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
try:
    import carafe_exp.ops as ops
except ImportError:  # a bare checkout without `pip install`: use the source tree
    sys.path.insert(0, str(REPO / "src"))
    import carafe_exp.ops as ops
import carafe_exp.ops.extension as ops_extension
from carafe_exp.allocator import configure_cpu_allocator

MEMORY_METHOD_CPU = (
    "peak bytes of torch tensor storages alive during the call that were created by it (the output "
    "included; views of the inputs excluded), tracked with a TorchDispatchMode and weakref finalizers; "
    "scratch memory inside a single "
    "kernel (the compiled op's per-thread row buffers, a few tens of KiB) is not seen"
)
MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated() minus the allocation before the call (the output included)"
FLOOR_METHOD = (
    "bytes the op must read and write once (forward: features + kernels + output; backward adds "
    "grad_output + features + kernels read and grad_features + grad_kernels written) divided by the "
    "bandwidth of a large tensor.copy_ in the same run (bytes read + written per second)"
)

COMPUTE_FLOOR_METHOD = (
    "the op's FLOPs (2·C·k² per output pixel forward, three times that for forward+backward) divided by "
    "the FLOP rate of a square torch.mm (2048², same dtype) measured in the same run: at C=256, k=5 (the FPN "
    "cases) the op does about 9 FLOPs per byte it must move, so on a CPU it is bound by arithmetic there, not by "
    "memory traffic"
)


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    scale: int
    down: bool


FULL_CASES = [
    Case("fpn_up_25x42", 2, 256, 25, 42, 5, 2, False),
    Case("fpn_up_50x84", 2, 256, 50, 84, 5, 2, False),
    Case("fpn_up_100x168", 2, 256, 100, 168, 5, 2, False),
    Case("carafe++_down_400x668", 2, 64, 400, 668, 5, 2, True),
]
QUICK_CASES = [
    Case("quick_up_12x14", 1, 16, 12, 14, 5, 2, False),
    Case("quick_down_24x28", 1, 16, 24, 28, 5, 2, True),
]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while active, and their peak."""

    def __init__(self, existing: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owners: dict[int, list[int]] = {}  # storage pointer -> [tensor objects alive, bytes]
        # Views of tensors that existed before (the inputs) allocate nothing.
        self._existing = {t.untyped_storage().data_ptr() for t in existing}

    def _release(self, key: int) -> None:
        entry = self._owners.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._owners[key]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._existing:
            return
        entry = self._owners.get(key)
        if entry is None:
            entry = self._owners[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                self._track(value)
        return result


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits: tiny timings must not round to zero."""
    return float(f"{value:.{digits}g}")


def machine_info(device: torch.device, allocator: dict) -> dict:
    return describe_machine(device) | {
        "backends_available": list(ops.available_backends()),
        "cpu_allocator": allocator,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }


@contextlib.contextmanager
def cuda_kernels_selected(extension: ModuleType, name: str) -> Iterator[None]:
    """The extension's ``name`` CUDA kernels (simple, tiled or auto) while inside; the previous choice after."""
    previous = extension.cuda_kernels()
    extension.set_cuda_kernels(name)
    try:
        yield
    finally:
        extension.set_cuda_kernels(previous)


def with_cuda_kernels(name: str, step: Callable[[], object], extension: ModuleType | None = None) -> Callable[[], object]:
    """``step``, one whole timed call (the forward, or the forward and its backward), run with the
    ``name`` CUDA kernels held throughout: the backward kernels must be the ones named too, or the
    forward+backward row of a kernel set would time its forward with another set's backward."""

    def run() -> object:
        with cuda_kernels_selected(extension if extension is not None else ops_extension.load(), name):
            return step()

    return run


def forward_backward(
    method: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor, grad_output: torch.Tensor
) -> Callable[[], None]:
    """One training-style call of ``method``: forward, then backward into fresh gradients of x and w."""

    def run() -> None:
        x.grad = w.grad = None
        method(x, w).backward(grad_output)

    return run


def timed_steps(
    method: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    kernel_set: str | None,
    features: torch.Tensor,
    kernels: torch.Tensor,
    grad_output: torch.Tensor,
    extension: ModuleType | None = None,
) -> tuple[Callable[[], object], Callable[[], None]]:
    """The two timed calls of one method: the forward, and forward then backward (into fresh leaf
    copies of the inputs); with a CUDA kernel set, each call holds it from start to end."""
    x_grad, w_grad = features.clone().requires_grad_(), kernels.clone().requires_grad_()
    forward = lambda: method(features, kernels)  # noqa: E731 - a timed thunk
    training = forward_backward(method, x_grad, w_grad, grad_output)
    if kernel_set is None:
        return forward, training
    return with_cuda_kernels(kernel_set, forward, extension), with_cuda_kernels(kernel_set, training, extension)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float) -> float:
    """Median milliseconds of ``fn``; slow calls get fewer repeats (at least one) within ``budget_s``."""
    start = time.perf_counter()
    fn()  # warm-up: JIT build, allocator, caches
    synchronize(device)
    warmup_s = time.perf_counter() - start
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeats and (not samples or spent + warmup_s <= budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        spent += samples[-1] / 1e3
    return statistics.median(samples)


def peak_memory(fn: Callable[[], object], device: torch.device, inputs: tuple[torch.Tensor, ...]) -> int:
    """Peak bytes allocated by ``fn`` beyond what existed before (see MEMORY_METHOD_*)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del result
        return int(peak)
    tracker = _LiveTensorBytes(inputs)
    with tracker:
        result = fn()
    del result
    return int(tracker.peak)


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int) -> float:
    """Bytes per second of tensor.copy_ (read + write) for a buffer of ``nbytes``."""
    source = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    ms = time_call(lambda: target.copy_(source), device, max(repeats, 5), budget_s=5.0)
    return 2 * source.numel() * 4 / (ms / 1e3)


def matmul_flop_rate(device: torch.device, dtype: torch.dtype, repeats: int, size: int) -> float:
    """FLOP/s of a square matmul: what this machine's vector units sustain in a tuned BLAS."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    ms = time_call(lambda: torch.mm(a, b), device, max(repeats, 3), budget_s=5.0)
    return 2 * size**3 / (ms / 1e3)


def run_case(
    case: Case, dtype: torch.dtype, device: torch.device, repeats: int, bandwidth: float, flop_rate: float, budget_s: float
) -> dict:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(case.batch, case.channels, case.height, case.width, generator=generator).to(device, dtype)
    shape = ops.kernels_shape(features.shape, case.kernel_size, case.scale, 1, case.down)
    kernels = torch.randn(shape, generator=generator).softmax(1).to(device, dtype)
    out_h, out_w = ops.output_size(case.height, case.width, case.scale, case.down)
    element = features.element_size()
    output_bytes = case.batch * case.channels * out_h * out_w * element
    feature_bytes, kernel_bytes = features.numel() * element, kernels.numel() * element
    op = ops.carafe_down if case.down else ops.carafe

    def reassemble(backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, w: op(x, w, case.kernel_size, case.scale, backend=backend)

    def nearest(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(out_h, out_w), mode="nearest")

    # name -> (method, the CUDA kernel set it runs with, or None)
    methods: dict[str, tuple[Callable, str | None]] = {"reference": (reassemble("reference"), None), "nearest": (nearest, None)}
    if "compiled" in ops.available_backends():
        methods["compiled"] = (reassemble("compiled"), None)
        if device.type == "cuda":
            # Each kernel set, until a measurement like this one picks the default.
            methods["compiled"] = (reassemble("compiled"), "simple")
            methods["compiled_tiled"] = (reassemble("compiled"), "tiled")
            methods["compiled_auto"] = (reassemble("compiled"), "auto")

    grad_output = torch.ones(case.batch, case.channels, out_h, out_w, device=device, dtype=dtype)

    results: dict[str, dict] = {}
    if "compiled" in methods:
        # The compiled kernels alone, writing into one preallocated output: the op's own time
        # minus the first touch of a fresh output's memory (page faults and the kernel zeroing
        # them), which depends on the allocator's state and weighs on every method alike.
        extension = ops_extension.load()
        target = torch.empty(case.batch, case.channels, out_h, out_w, device=device, dtype=dtype)
        with torch.no_grad():
            into_ms = time_call(
                lambda: extension.forward_into(features, kernels, case.kernel_size, case.scale, 1, case.down, target),
                device,
                repeats,
                budget_s,
            )
        results["compiled_into"] = {"forward_ms": significant(into_ms), "forward_backward_ms": None}
    for name, (method, kernel_set) in methods.items():
        forward, training = timed_steps(method, kernel_set, features, kernels, grad_output)
        with torch.no_grad():
            forward_ms = time_call(forward, device, repeats, budget_s)
            forward_peak = peak_memory(forward, device, (features, kernels))
        backward_ms = time_call(training, device, repeats, budget_s)
        results[name] = {
            "forward_ms": significant(forward_ms),
            "forward_backward_ms": significant(backward_ms),
            "forward_peak_extra_bytes": forward_peak,
            "forward_peak_extra_vs_output": round(forward_peak / output_bytes, 3),
        }
    forward_bytes = feature_bytes + kernel_bytes + output_bytes
    backward_bytes = output_bytes + 2 * (feature_bytes + kernel_bytes)
    results["floor"] = {
        "forward_ms": significant(forward_bytes / bandwidth * 1e3),
        "forward_backward_ms": significant((forward_bytes + backward_bytes) / bandwidth * 1e3),
        "forward_bytes_moved": forward_bytes,
        "forward_backward_bytes_moved": forward_bytes + backward_bytes,
    }
    forward_flops = 2 * case.batch * case.channels * case.kernel_size**2 * out_h * out_w
    results["compute_floor"] = {
        "forward_ms": significant(forward_flops / flop_rate * 1e3),
        "forward_backward_ms": significant(3 * forward_flops / flop_rate * 1e3),
        "forward_flops": forward_flops,
    }
    summary = {}
    if "compiled" in results:
        compiled, reference, floor = results["compiled"], results["reference"], results["floor"]
        summary = {
            "compiled_speedup_forward": round(reference["forward_ms"] / compiled["forward_ms"], 2),
            "compiled_speedup_forward_backward": round(
                reference["forward_backward_ms"] / compiled["forward_backward_ms"], 2
            ),
            "compiled_forward_vs_floor": round(compiled["forward_ms"] / floor["forward_ms"], 2),
            "compiled_forward_backward_vs_floor": round(compiled["forward_backward_ms"] / floor["forward_backward_ms"], 2),
            "compiled_forward_vs_compute_floor": round(compiled["forward_ms"] / results["compute_floor"]["forward_ms"], 2),
            "compiled_into_forward_vs_floor": round(results["compiled_into"]["forward_ms"] / floor["forward_ms"], 2),
        }
        for kernel_set in ("tiled", "auto"):
            if f"compiled_{kernel_set}" not in results:
                continue
            other = results[f"compiled_{kernel_set}"]
            summary |= {
                f"{kernel_set}_speedup_forward_vs_simple": round(compiled["forward_ms"] / other["forward_ms"], 2),
                f"{kernel_set}_speedup_forward_backward_vs_simple": round(
                    compiled["forward_backward_ms"] / other["forward_backward_ms"], 2
                ),
                f"{kernel_set}_forward_vs_floor": round(other["forward_ms"] / floor["forward_ms"], 2),
                f"{kernel_set}_speedup_forward_backward_vs_reference": round(
                    reference["forward_backward_ms"] / other["forward_backward_ms"], 2
                ),
            }
    return {
        "case": case.name,
        "dtype": str(dtype).removeprefix("torch."),
        "features_shape": list(features.shape),
        "kernels_shape": list(kernels.shape),
        "output_shape": [case.batch, case.channels, out_h, out_w],
        "kernel_size": case.kernel_size,
        "scale": case.scale,
        "down": case.down,
        "output_bytes": output_bytes,
        "results": results,
        "summary": summary,
    }


def format_table(records: list[dict]) -> str:
    header = f"{'case':<24}{'dtype':<10}{'method':<14}{'fwd ms':>11}{'fwd+bwd ms':>13}{'peak MiB':>10}{'×output':>9}"
    lines = [header, "-" * len(header)]
    for record in records:
        for method in (
            "reference", "compiled", "compiled_tiled", "compiled_auto", "compiled_into", "nearest", "floor", "compute_floor"
        ):
            if method not in record["results"]:
                continue
            r = record["results"][method]
            peak = r.get("forward_peak_extra_bytes")
            peak_text = f"{peak / 2**20:10.1f}" if peak is not None else f"{'':>10}"
            ratio = r.get("forward_peak_extra_vs_output")
            ratio_text = f"{ratio:9.2f}" if ratio is not None else f"{'':>9}"
            both = r["forward_backward_ms"]
            both_text = f"{both:13.2f}" if both is not None else f"{'':>13}"
            lines.append(
                f"{record['case']:<24}{record['dtype']:<10}{method:<14}{r['forward_ms']:11.2f}"
                f"{both_text}{peak_text}{ratio_text}"
            )
        if record["summary"]:
            s = record["summary"]
            lines.append(
                f"{'':<24}compiled: ×{s['compiled_speedup_forward']} (fwd) ×{s['compiled_speedup_forward_backward']}"
                f" (fwd+bwd) faster than reference; {s['compiled_forward_vs_floor']}× the floor,"
                f" {s['compiled_forward_vs_compute_floor']}× the compute floor (fwd);"
                f" into a preallocated output {s['compiled_into_forward_vs_floor']}× the floor"
            )
        for kernel_set in ("tiled", "auto"):
            if f"{kernel_set}_speedup_forward_vs_simple" in record["summary"]:
                s = record["summary"]
                lines.append(
                    f"{'':<24}{kernel_set} CUDA kernels: ×{s[f'{kernel_set}_speedup_forward_vs_simple']} (fwd)"
                    f" ×{s[f'{kernel_set}_speedup_forward_backward_vs_simple']} (fwd+bwd) vs the simple ones;"
                    f" {s[f'{kernel_set}_forward_vs_floor']}× the floor (fwd)"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (fewer when slow)")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per measurement before repeats stop")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the benchmark")
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 (CPU), float32 bfloat16 (CUDA)")
    parser.add_argument("--cases", nargs="+", default=None, help="run only these case names")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/op_<device>_<date>.json)")
    args = parser.parse_args(argv)
    allocator = vars(configure_cpu_allocator())  # as the carafe-exp process does, before large tensors

    device = torch.device(args.device)
    dtype_names = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    dtypes = [getattr(torch, name) for name in dtype_names]
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.cases:
        unknown = set(args.cases) - {case.name for case in cases}
        if unknown:
            parser.error(f"unknown case(s) {sorted(unknown)}; choose from {[case.name for case in cases]}")
        cases = [case for case in cases if case.name in args.cases]
    bandwidth = copy_bandwidth(device, (4 if args.quick else 256) * 2**20, args.repeats)

    records = []
    flop_rates = {}
    for dtype in dtypes:
        flop_rates[str(dtype).removeprefix("torch.")] = rate = matmul_flop_rate(
            device, dtype, args.repeats, 256 if args.quick else 2048
        )
        for case in cases:
            records.append(run_case(case, dtype, device, args.repeats, bandwidth, rate, args.budget))
            print(f"done: {case.name} {dtype}", file=sys.stderr, flush=True)

    report = {
        "benchmark": "carafe_exp.ops reassembly operator",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(device, allocator),
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 3),
        "matmul_GFLOPs": {name: round(rate / 1e9, 2) for name, rate in flop_rates.items()},
        "methods": {
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter, median of repeats after a warm-up",
            "memory": MEMORY_METHOD_CUDA if device.type == "cuda" else MEMORY_METHOD_CPU,
            "floor": FLOOR_METHOD,
            "compute_floor": COMPUTE_FLOOR_METHOD,
            "nearest": "F.interpolate(mode='nearest') to the output size: the content-unaware baseline",
            "compiled_into": (
                "the compiled forward kernels writing into one preallocated output (extension.forward_into): "
                "the op without the first touch of a fresh output's memory, whose cost depends on the allocator"
            ),
            "compiled": "carafe()/carafe_down() with backend='compiled', a plain call allocating its output; on a "
                        "GPU with the simple CUDA kernels",
            "compiled_tiled": "the same with the tiled CUDA kernels (GPU only), held through the backward",
            "compiled_auto": "the same with the kernels chosen per call and pass from the launch shape (GPU only)",
        },
        "cases": records,
    }
    out = args.out
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
        out = REPO / "benchmarks" / "results" / f"op_{device.type}_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(records))
    print(
        f"copy bandwidth {report['copy_bandwidth_GBps']} GB/s; matmul {report['matmul_GFLOPs']} GFLOP/s; "
        f"results written to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
