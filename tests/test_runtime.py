"""soft_d2.utils.runtime: one spelling per setting for both trainers, the other accepted as an alias."""
import pytest
import torch

from classification.config import ConfigError, resolve
from classification.train import autocast_dtype
from soft_d2.d2.amp import autocast_dtype as d2_autocast_dtype
from soft_d2.utils.runtime import amp_dtype, fused_optimizer_options, kernel_method, share_cpu_threads


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
