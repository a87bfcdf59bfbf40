"""One command that validates and times the CUDA kernels on a GPU (``make gpu-check``).

Steps, each timed and recorded; a failed step does not stop the later ones:

1. ``build``: the extension with its CUDA kernels (``--fresh-build``: in an empty build directory).
2. ``gpu_tests``: ``pytest -m gpu tests/ops/test_op_gpu.py``: every kernel choice (simple, tiled,
   auto) against the float64 reference, outputs NaN-filled before every launch.
3. ``plan``: what each kernel choice launches for each benchmark case on this GPU (``plan()``).
4. ``timing``: forward and forward+backward, float32 and bfloat16, at the FPN top-down steps
   (N=2, C=256, k=5, ×2) and the CARAFE++ downsampling case, for each kernel set against the
   pure-PyTorch reference and the memory floor (scripts/bench_op.py's ``run_case``).
5. ``index64``: an output above 2**31 elements (bfloat16), forward and backward with each kernel
   choice, sampled at its first, middle and last elements against explicit float64 sums.
6. ``sanitizers``: compute-sanitizer memcheck, racecheck and synccheck (three processes at once)
   on a small case, every kernel choice, up and down, forward and backward.

Writes ``benchmarks/results/op_<gpu>_<date>.json`` (the machine described) and exits 1 when a
step failed. The default kernel set is not changed here: the JSON's ``fastest_kernel_set`` is the
measurement that decides it (csrc/carafe_bindings.cpp). Needs torch, pytest and ninja only (no
Hydra, Lightning or pycocotools on this path). Sized to finish within 8 minutes on one H200
including a fresh build.

``--dry-run`` checks every step on the CPU, without CUDA: the CPU build, collecting (not running)
the GPU tests, the plans for an H200, the timing of the small CPU cases, the 64-bit check's
sampling at a small size, and the sanitizer case run directly (compute-sanitizer located, not run).

    python scripts/gpu_check.py [--dry-run] [--fresh-build] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_op and machine, beside this script
import bench_op  # noqa: E402 - after the path above
from bench_op import ops, ops_extension  # noqa: E402 - the package as bench_op found it

KERNEL_SETS = ("simple", "tiled", "auto")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
# Packages a torch-only machine lacks: importing any of them on this path is a bug.
FORBIDDEN_IMPORTS = ("hydra", "omegaconf", "lightning", "pytorch_lightning", "pycocotools", "torchvision")

# The sanitizers' small case: forward and backward with every kernel choice, up and down. Run by
# compute-sanitizer in its own process (argv: device), and directly in a dry run.
SANITIZER_CASE = """
import sys
import torch
from carafe_exp.ops import carafe, carafe_down, extension
device = sys.argv[1]
generator = torch.Generator().manual_seed(0)
for kernel_set in ("simple", "tiled", "auto"):
    extension.load().set_cuda_kernels(kernel_set)
    for op, shape, kernel_shape in ((carafe, (1, 40, 7, 9), (1, 25, 14, 18)), (carafe_down, (1, 40, 9, 7), (1, 25, 5, 4))):
        x = torch.randn(*shape, generator=generator).to(device).requires_grad_()
        w = torch.randn(*kernel_shape, generator=generator).softmax(1).to(device).requires_grad_()
        out = op(x, w, 5, 2, backend="compiled")
        out.backward(torch.randn(out.shape, generator=generator).to(device))
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
if device == "cuda":
    torch.cuda.synchronize()
print("sanitizer case done")
"""


def _step(name: str, run: Callable[[], dict], steps: dict) -> None:
    """Runs one step, recording its outcome and seconds; an exception fails the step, not the script."""
    print(f"== {name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - any failure of a step is reported in the JSON
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    steps[name] = result
    print(f"   {result['status']} ({result['seconds']} s){': ' + result['error'] if 'error' in result else ''}", file=sys.stderr)


def build(dry_run: bool) -> dict:
    module = ops_extension.build(with_cuda=not dry_run)
    if not dry_run and not module.has_cuda:
        return {"status": "failed", "error": "the extension was built without its CUDA kernels"}
    return {"status": "passed", "module": module.__file__, "has_cuda": bool(module.has_cuda)}


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child, with the checkout's src/ importable (no install needed)."""
    env = dict(os.environ) | extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH", "")]))
    return env


def gpu_tests(dry_run: bool, timeout_s: float) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/ops/test_op_gpu.py", "-q", "-p", "no:cacheprovider"]
    if dry_run:
        command.append("--collect-only")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=_environment())
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    if dry_run:
        collected = re.search(r"(\d+) tests? collected", done.stdout)
        ok = done.returncode == 0 and collected is not None and int(collected.group(1)) > 0
        return {"status": "passed" if ok else "failed", "summary": tail, **({} if ok else {"error": done.stderr[-2000:]})}
    ok = done.returncode == 0 and " passed" in tail and "skipped" not in tail
    return {"status": "passed" if ok else "failed", "summary": tail, **({} if ok else {"error": done.stdout[-3000:]})}


def multiprocessors(device: torch.device) -> int:
    # An H100/H200 in a dry run: the plans the GPU would get.
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def plans(cases: list, device: torch.device) -> dict:
    extension = ops_extension.load()
    result = {}
    for case in cases:
        shape = [case.batch, case.channels, case.height, case.width]
        result[case.name] = {
            kernel_set: extension.plan(shape, case.kernel_size, case.scale, 1, case.down, "float32", kernel_set, multiprocessors(device))
            for kernel_set in KERNEL_SETS
        }
    return {"status": "passed", "multiprocessors": multiprocessors(device), "cases": result}


def timing(cases: list, dtypes: list[torch.dtype], device: torch.device, repeats: int, budget_s: float) -> dict:
    bandwidth = bench_op.copy_bandwidth(device, (256 if device.type == "cuda" else 4) * 2**20, repeats)
    records, rates = [], {}
    for dtype in dtypes:
        rate = bench_op.matmul_flop_rate(device, dtype, repeats, 4096 if device.type == "cuda" else 256)
        rates[str(dtype).removeprefix("torch.")] = round(rate / 1e9, 2)
        for case in cases:
            records.append(bench_op.run_case(case, dtype, device, repeats, bandwidth, rate, budget_s))
    totals: dict[str, float] = {}
    for kernel_set, method in (("simple", "compiled"), ("tiled", "compiled_tiled"), ("auto", "compiled_auto")):
        rows = [record["results"].get(method) for record in records]
        if rows and all(rows):
            totals[kernel_set] = round(sum(row["forward_backward_ms"] for row in rows), 3)
    print(bench_op.format_table(records), file=sys.stderr)
    return {
        "status": "passed",
        "copy_bandwidth_GBps": round(bandwidth / 1e9, 3),
        "matmul_GFLOPs": rates,
        "forward_backward_ms_total": totals,
        # The set with the least forward+backward time over all cases and dtypes: the measurement
        # that decides the default kernel set (csrc/carafe_bindings.cpp), which this does not change.
        "fastest_kernel_set": min(totals, key=totals.get) if totals else None,
        "cases": records,
    }


def _sampled_output(x: torch.Tensor, w: torch.Tensor, k: int, s: int, c: int, y: int, xo: int) -> float:
    """out[0, c, y, xo] of CARAFE upsampling, as an explicit float64 sum over the taps."""
    r, (height, width) = k // 2, x.shape[2:]
    total = 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            iy, ix = y // s + dy, xo // s + dx
            if 0 <= iy < height and 0 <= ix < width:
                total += float(w[0, (dy + r) * k + dx + r, y, xo].double()) * float(x[0, c, iy, ix].double())
    return total


def _sampled_grad_kernels(x: torch.Tensor, k: int, s: int, t: int, y: int, xo: int) -> float:
    """grad_kernels[0, t, y, xo] for a grad_output of ones: the sum over channels of the tap's input."""
    r, (height, width) = k // 2, x.shape[2:]
    iy, ix = y // s + t // k - r, xo // s + t % k - r
    return float(x[0, :, iy, ix].double().sum()) if 0 <= iy < height and 0 <= ix < width else 0.0


def _sampled_grad_features(w: torch.Tensor, k: int, s: int, i: int, j: int) -> float:
    """grad_features[0, c, i, j] (any c) for a grad_output of ones: the weights of every output reading (i, j)."""
    r, (out_h, out_w) = k // 2, w.shape[2:]
    total = 0.0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            sy, sx = i - dy, j - dx  # the source pixel of the outputs that read (i, j) through (dy, dx)
            rows = [y for y in range(s * sy, s * sy + s) if 0 <= y < out_h] if sy >= 0 else []
            cols = [x for x in range(s * sx, s * sx + s) if 0 <= x < out_w] if sx >= 0 else []
            for y in rows:
                for x in cols:
                    total += float(w[0, (dy + r) * k + dx + r, y, x].double())
    return total


def index64(device: torch.device, dry_run: bool) -> dict:
    """An output above 2**31 elements: every kernel choice, sampled at the first, middle and last elements."""
    k, s = 5, 2
    channels, size = (8, 6) if dry_run else (256, 1450)  # 256 x 2900 x 2900 = 2.15e9 > 2**31 outputs
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, generator=generator).to(device, torch.bfloat16)
    w = torch.rand(1, k * k, s * size, s * size, generator=generator).to(device, torch.bfloat16)
    out_elements = channels * (s * size) ** 2
    extension = ops_extension.load()
    last = (channels - 1, s * size - 1, s * size - 1)
    positions = [(0, 0, 0), (channels // 2, size, size + 1), last]
    failures, checked = [], 0
    for kernel_set in KERNEL_SETS if device.type == "cuda" else ("simple",):
        with bench_op.cuda_kernels_selected(extension, kernel_set):
            out = extension.forward(x, w, k, s, 1, False, False)
            for c, y, xo in positions:
                want, got = _sampled_output(x, w, k, s, c, y, xo), float(out[0, c, y, xo].double())
                checked += 1
                if abs(got - want) > 0.02 * max(1.0, abs(want)):
                    failures.append(f"{kernel_set} output{(c, y, xo)}: {got} != {want}")
            del out
            ones = torch.ones(1, channels, s * size, s * size, device=device, dtype=torch.bfloat16)
            grad_x, grad_w = extension.backward(ones, x, w, k, s, 1, False, False, False)
            del ones
            for t, y, xo in [(0, 0, 0), (12, size, size + 1), (k * k - 1, s * size - 1, s * size - 1)]:
                want, got = _sampled_grad_kernels(x, k, s, t, y, xo), float(grad_w[0, t, y, xo].double())
                checked += 1
                if abs(got - want) > 0.02 * max(1.0, abs(want)):
                    failures.append(f"{kernel_set} grad_kernels{(t, y, xo)}: {got} != {want}")
            for c, i, j in [(0, 0, 0), (channels - 1, size - 1, size - 1)]:
                want, got = _sampled_grad_features(w, k, s, i, j), float(grad_x[0, c, i, j].double())
                checked += 1
                if abs(got - want) > 0.02 * max(1.0, abs(want)):
                    failures.append(f"{kernel_set} grad_features{(c, i, j)}: {got} != {want}")
            del grad_x, grad_w
    result = {"output_elements": out_elements, "above_2_31": out_elements > 2**31, "checked": checked}
    if failures:
        return {"status": "failed", "error": "; ".join(failures[:6]), **result}
    return {"status": "passed", **result}


def find_compute_sanitizer() -> Path | None:
    """compute-sanitizer of the CUDA toolkit the build uses, or on PATH."""
    from carafe_exp.ops.cuda_toolkit import find_cuda_home

    home = find_cuda_home()
    candidates = [home / "bin" / "compute-sanitizer", home / "compute-sanitizer" / "compute-sanitizer"] if home else []
    on_path = shutil.which("compute-sanitizer")
    candidates += [Path(on_path)] if on_path else []
    return next((path for path in candidates if path.is_file()), None)


def sanitizers(device: torch.device, dry_run: bool, timeout_s: float) -> dict:
    # Without the caching allocator every tensor is its own allocation, so memcheck sees its bounds.
    env = _environment(PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    tool_path = find_compute_sanitizer()
    if dry_run:
        done = subprocess.run(
            [sys.executable, "-c", SANITIZER_CASE, device.type], capture_output=True, text=True, env=env, timeout=timeout_s
        )
        ok = done.returncode == 0 and "sanitizer case done" in done.stdout
        return {
            "status": "passed" if ok else "failed",
            "compute_sanitizer": str(tool_path) if tool_path else None,
            "note": "dry run: the case ran directly on the CPU; compute-sanitizer was not run",
            **({} if ok else {"error": done.stderr[-2000:]}),
        }
    if tool_path is None:
        return {"status": "failed", "error": "compute-sanitizer not found in the CUDA toolkit or on PATH"}
    # The three tools at once, each in its own process: one GPU has room for all, and the 8-minute
    # budget has not for three CUDA start-ups under a sanitizer in turn.
    running = {}
    for tool in SANITIZER_TOOLS:
        command = [str(tool_path), "--tool", tool, "--error-exitcode", "99", "--print-limit", "20"]
        command += [sys.executable, "-c", SANITIZER_CASE, "cuda"]
        running[tool] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + timeout_s
    tools, failed = {}, []
    for tool, process in running.items():
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            summary = next((line for line in reversed(output.splitlines()) if "ERROR SUMMARY" in line), "")
            ok = process.returncode == 0 and "sanitizer case done" in output
            tools[tool] = {"passed": ok, "summary": summary, **({} if ok else {"output": output[-3000:]})}
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            ok = False
            tools[tool] = {"passed": False, "summary": f"timed out after {timeout_s} s"}
        if not ok:
            failed.append(tool)
    result = {"compute_sanitizer": str(tool_path), "tools": tools}
    if failed:
        return {"status": "failed", "error": f"{', '.join(failed)} reported errors", **result}
    return {"status": "passed", **result}


def gpu_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu-dry-run"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="check every step on the CPU, without CUDA")
    parser.add_argument("--fresh-build", action="store_true", help="build the extension in an empty directory")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/op_<gpu>_<date>.json)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; --dry-run checks the steps on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    started = time.perf_counter()
    if args.fresh_build:
        os.environ[ops_extension.EXT_DIR_ENV] = tempfile.mkdtemp(prefix="carafe-gpu-check-ext-")
    cases = bench_op.QUICK_CASES if args.dry_run else bench_op.FULL_CASES
    dtypes = [torch.float32] if args.dry_run else [torch.float32, torch.bfloat16]

    steps: dict[str, dict] = {}
    _step("build", lambda: build(args.dry_run), steps)
    _step("gpu_tests", lambda: gpu_tests(args.dry_run, timeout_s=240), steps)
    _step("plan", lambda: plans(cases, device), steps)
    _step("timing", lambda: timing(cases, dtypes, device, args.repeats, budget_s=1.0 if args.dry_run else 2.0), steps)
    _step("index64", lambda: index64(device, args.dry_run), steps)
    _step("sanitizers", lambda: sanitizers(device, args.dry_run, timeout_s=180), steps)
    forbidden = sorted(name for name in FORBIDDEN_IMPORTS if name in sys.modules)
    steps["imports"] = {
        "status": "failed" if forbidden else "passed",
        "forbidden_imported": forbidden,
        **({"error": f"imported {', '.join(forbidden)} (this path must need torch only)"} if forbidden else {}),
    }

    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "check": "carafe_exp.ops CUDA kernels: scripts/gpu_check.py",
        "dry_run": args.dry_run,
        "date_utc": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": bench_op.machine_info(device, {"reason": "not configured by gpu_check"}),
        "default_kernel_set": ops_extension.load().cuda_kernels(),
        "seconds": round(time.perf_counter() - started, 1),
        "passed": all(step["status"] == "passed" for step in steps.values()),
        "steps": steps,
    }
    out = args.out
    if out is None:
        folder = Path(tempfile.gettempdir()) if args.dry_run else REPO / "benchmarks" / "results"
        out = folder / f"op_{gpu_slug(device)}_{now.strftime('%Y%m%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, step in steps.items():
        print(f"{name:<12}{step['status']:<8}{step.get('seconds', '')}", flush=True)
    print(f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']} s; results written to {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
