"""Bad input to the Gaussian-kernel ops: clear errors naming the tensor, on every path."""
from __future__ import annotations

import pytest
import torch

from soft_d2 import ops

METHODS = ["torch"] + (["compiled"] if ops.compiled_available() else [])


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(dtype=dtype, device=device)


@pytest.mark.parametrize("method", METHODS)
def test_batch_mismatch_names_tensor(method):
    with pytest.raises(ValueError, match=r"gaussian_kernel_matmul: w has batch dims \(2, 3\) but a has \(2, 2\)"):
        ops.gaussian_kernel_matmul(_t(2, 2, 10, 4), _t(2, 2, 5, 4), _t(2, 3, 5, 4), method)
    with pytest.raises(ValueError, match=r"b has batch dims \(1, 2\) but a has \(2, 2\)"):
        ops.gaussian_kernel(_t(2, 2, 10, 4), _t(1, 2, 5, 4), method)


@pytest.mark.parametrize("method", METHODS)
def test_feature_and_row_mismatch_names_tensor(method):
    with pytest.raises(ValueError, match="b has 5 features but a has 4"):
        ops.gaussian_kernel_t_matmul(_t(1, 10, 4), _t(1, 6, 5), _t(1, 10, 3), method)
    with pytest.raises(ValueError, match="v has 9 rows but a has 10"):
        ops.gaussian_kernel_t_matmul(_t(1, 10, 4), _t(1, 6, 4), _t(1, 9, 3), method)
    with pytest.raises(ValueError, match="w has 7 rows but b has 6"):
        ops.gaussian_kernel_matmul(_t(1, 10, 4), _t(1, 6, 4), _t(1, 7, 3), method)


@pytest.mark.parametrize("method", METHODS)
def test_non_floating_and_rank(method):
    with pytest.raises(TypeError, match="a must be a floating-point tensor, got torch.int64"):
        ops.gaussian_kernel(torch.ones(1, 3, 2, dtype=torch.long), _t(1, 3, 2), method)
    with pytest.raises(ValueError, match=r"b must have shape \[\.\.\., rows, features\]"):
        ops.gaussian_kernel(_t(3, 2), _t(2), method)
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        ops.gaussian_kernel_matmul(_t(3, 2), _t(3, 2), [[1.0]], method)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_devices(method):
    with pytest.raises(ValueError, match="v is on meta but a is on cpu"):
        ops.nystrom_attention(_t(1, 8, 4), _t(1, 3, 4), torch.empty(1, 8, 4, device="meta"),
                              lambda s: s, method)


@pytest.mark.parametrize("method", METHODS)
def test_check_finite_is_opt_in(method):
    a = _t(1, 8, 4)
    a[0, 3, 1] = float("nan")
    b = _t(1, 3, 4)
    out = ops.gaussian_kernel(a, b, method)  # documented: NaN row -> NaN row, others intact
    assert out[0, 3].isnan().all() and torch.isfinite(out[0, [0, 1, 2, 4]]).all()
    a[0, 3, 1] = float("inf")  # documented: that row becomes NaN or 0 (sign-dependent)
    row = ops.gaussian_kernel(a, b, method)[0, 3]
    assert ((row == 0) | row.isnan()).all()
    with pytest.raises(ValueError, match="gaussian_kernel: a contains inf or NaN"):
        ops.gaussian_kernel(a, b, method, check_finite=True)


@pytest.mark.skipif(not ops.compiled_available(), reason="compiled extension not built")
def test_extension_checks_name_tensors():
    # The extension checks its own inputs too (callers that bypass soft_d2.ops).
    from soft_d2 import _C

    with pytest.raises(RuntimeError, match="gaussian_kernel_matmul: w has 7 rows but b has 6"):
        _C.kernel_matmul_forward(_t(1, 10, 4), _t(1, 6, 4), _t(1, 7, 3), 0)
    with pytest.raises(RuntimeError, match="gaussian_kernel_t_matmul: v must be a floating-point tensor"):
        _C.kernel_t_matmul_forward(_t(1, 10, 4), _t(1, 6, 4), torch.ones(1, 10, 3, dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match="gaussian_kernel: b has 2 batch\\*heads but a has 1"):
        _C.gaussian_kernel_forward(_t(1, 10, 4), _t(2, 6, 4), 0)
    with pytest.raises(RuntimeError, match="must be a \\[batch\\*heads, rows, features\\] tensor"):
        _C.gaussian_kernel_forward(_t(10, 4), _t(6, 4), 0)
