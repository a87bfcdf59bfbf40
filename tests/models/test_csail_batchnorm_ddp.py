"""``model.bn_stats=csail`` under DDP: statistics synchronised over the processes, as CSAIL's SyncBN over GPUs.

Two gloo processes holding half a batch each must give what one process gives on the whole batch: the
outputs, the input gradients and the running statistics (CSAIL ``lib/nn/modules/batchnorm.py``: the master
reduces the sums, square sums and sizes of every device before ``_compute_mean_std``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

WORKER = '''
import os, sys
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from carafe_exp.models.csail_batchnorm import CsailBatchNorm2d

def layer():
    bn = CsailBatchNorm2d(3).double()
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    return bn

def run(rank, world, port, x, w, queue):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    bn, part = layer(), x[rank::world].clone().requires_grad_(True)
    y = bn(part)
    (y * w[rank::world]).sum().backward()
    queue.put((rank, *(t.detach().numpy().copy() for t in (y, part.grad, bn.running_mean, bn.running_var))))
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    w = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    bn, whole = layer(), x.clone().requires_grad_(True)
    y = bn(whole)
    (y * w).sum().backward()
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [context.Process(target=run, args=(r, 2, int(sys.argv[1]), x, w, queue)) for r in range(2)]
    for p in processes:
        p.start()
    results = dict((r[0], r[1:]) for r in (queue.get(), queue.get()))
    for p in processes:
        p.join()
    for rank, (out, grad, mean, var) in sorted(results.items()):
        same = [np.allclose(out, y[rank::2].detach().numpy()), np.allclose(grad, whole.grad[rank::2].numpy()),
                np.allclose(mean, bn.running_mean.numpy()), np.allclose(var, bn.running_var.numpy())]
        print("rank", rank, "equal", all(same), same)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_with_half_batches_equal_one_with_the_whole(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(script), str(_free_port())], capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("equal True") == 2, result.stdout + result.stderr[-2000:]
