"""soft_d2.utils.runtime: one spelling per setting for both trainers, the other accepted as an alias;
soft_d2.utils.cpu_allocator: freed CPU memory kept for reuse."""
import os
import resource
import subprocess
import sys

import pytest
import torch

from classification.config import ConfigError, resolve
from classification.train import autocast_dtype
from soft_d2.d2.amp import autocast_dtype as d2_autocast_dtype
from soft_d2.utils.runtime import amp_dtype, fused_optimizer_options, kernel_method, share_cpu_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, dtype", [("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                         ("float16", torch.float16), ("fp16", torch.float16)])
def test_both_trainers_read_both_precision_spellings(name, dtype):
    assert amp_dtype(name, "key") is dtype
    assert d2_autocast_dtype(name) is dtype
    cfg = resolve(None, {"amp": name})
    assert autocast_dtype(cfg, torch.device("cpu")) is dtype


def test_precision_errors_name_the_setting():
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION"):
        d2_autocast_dtype("half")
    with pytest.raises(ConfigError, match="amp"):
        resolve(None, {"amp": "half"})
    assert autocast_dtype(resolve(None, {"amp": "auto"}), torch.device("cpu")) is None  # CPU: no autocast by default
    assert autocast_dtype(resolve(None, {"amp": "none"}), torch.device("cpu")) is None


def test_kernel_method_names():
    assert [kernel_method(n, "k") for n in ("auto", "compiled", "torch", "cuda")] == ["auto", "compiled", "torch", "compiled"]
    with pytest.raises(ValueError, match="MODEL.SOFT.KERNEL_METHOD"):
        kernel_method("gpu", "MODEL.SOFT.KERNEL_METHOD")
    assert resolve(None, {}).kernel_method == "auto"  # the same default as MODEL.SOFT.KERNEL_METHOD


def test_fused_optimizer_and_thread_share(monkeypatch):
    assert fused_optimizer_options("ADAMW") == fused_optimizer_options("adam") == {"fused": True}
    assert fused_optimizer_options("sgd") == {}
    before = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    try:
        share_cpu_threads(1)
        assert torch.get_num_threads() == before  # one process keeps what it has
        share_cpu_threads(4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# Allocates, fills and frees a 64 MiB tensor four times; prints what keep_freed_memory() returned
# and the minor page faults of the last round (the heap has grown to fit by then).
REFAULT_SCRIPT = """
import resource, torch
from soft_d2.utils.cpu_allocator import keep_freed_memory
kept = keep_freed_memory()
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(1 << 24)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
print(kept, faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting (Linux)")
@pytest.mark.parametrize("setting", ["default", "off"])
def test_keep_freed_memory_reuses_pages(setting):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["SOFT_D2_KEEP_FREED_MEMORY"] = "1" if setting == "default" else "0"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", REFAULT_SCRIPT], capture_output=True, text=True, env=env, check=True)
    kept, faults = out.stdout.split()
    pages = (1 << 26) // resource.getpagesize()
    if setting == "default":
        assert kept == "True"
        assert int(faults) < pages // 10, f"{faults} page faults: freed memory went back to the kernel"
    else:  # malloc as glibc ships it: the block is unmapped on free and faulted in again
        assert kept == "False"
        assert int(faults) > pages // 2
