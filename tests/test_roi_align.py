"""The compiled multi-threaded CPU RoIAlign backward (soft_d2._C.roi_align_backward_cpu) and its
registration as the CPU kernel of torchvision's ``_roi_align_backward``.

The kernel is compared bit for bit with torchvision's own CPU kernel and, in float64, with a
scalar reference written here from RoIAlign's definition. Registering it replaces torchvision's
kernel for the whole process, so everything that needs the registration runs in one subprocess
(``registered`` below); the tests in this process run with torchvision's own kernel, which the
comparisons here rely on (the ``torchvision_kernel`` fixture).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from soft_d2.ops import extension  # noqa: E402
from soft_d2.ops import roi_align as ra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_C = extension.compiled_module()
if _C is None or not hasattr(_C, "roi_align_backward_cpu"):
    pytest.skip(f"compiled soft_d2._C with roi_align_backward_cpu not built ({extension.load_error()})",
                allow_module_level=True)

torchvision_backward = torch.ops.torchvision._roi_align_backward


@pytest.fixture(autouse=True)
def torchvision_kernel():
    """torchvision's own CPU kernel during each test here, even where an earlier test of this
    pytest process (train_net.py's main) registered ours; the registration is restored after."""
    library = ra._LIBRARY
    if library is not None:
        library._destroy()
        ra._LIBRARY = None
    yield
    if library is not None:
        ra._LIBRARY = None
        assert ra.use_parallel_roi_align_backward()


def random_rois(n: int, batch: int, height: int, width: int, scale: float, gen) -> torch.Tensor:
    """[n, 5] rois in image coordinates: many partly or wholly outside the feature map, and some
    degenerate ones (zero size, x2 < x1, a point on the border)."""
    w_img, h_img = width / scale, height / scale
    x1 = torch.rand(n, generator=gen) * 1.4 * w_img - 0.2 * w_img
    y1 = torch.rand(n, generator=gen) * 1.4 * h_img - 0.2 * h_img
    bw = torch.rand(n, generator=gen) * 0.8 * w_img
    bh = torch.rand(n, generator=gen) * 0.8 * h_img
    idx = torch.randint(0, batch, (n,), generator=gen).double()
    rois = torch.stack([idx, x1, y1, x1 + bw, y1 + bh], 1)
    special = torch.tensor([
        [0, 0, 0, w_img, h_img],                      # the whole image
        [0, 2, 3, 2, 3],                              # zero size
        [batch - 1, 5, 6, 1, 2],                      # x2 < x1, y2 < y1
        [0, w_img, h_img, w_img + 1, h_img + 1],      # at the bottom-right border
        [batch - 1, -3 * w_img, -3 * h_img, -w_img, -h_img],  # outside
    ], dtype=torch.float64)
    return torch.cat([rois, special])


def backward_args(dtype, aligned, sampling_ratio, scale, *, batch=2, channels=3, height=11,
                  width=14, pooled=(3, 4), num_rois=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rois = random_rois(num_rois, batch, height, width, scale, gen)
    grad = torch.randn(rois.shape[0], channels, *pooled, generator=gen, dtype=torch.float64)
    return (grad.to(dtype), rois.to(dtype), scale, pooled[0], pooled[1], batch, channels, height,
            width, sampling_ratio, aligned)


def reference_backward(grad, rois, scale, pooled_h, pooled_w, batch, channels, height, width,
                       sampling_ratio, aligned):
    """RoIAlign's input gradient from its definition, in float64 Python scalars."""
    grad = grad.double()
    out = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        start_x, start_y = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = x2 * scale - offset - start_x, y2 * scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(bin_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                g = grad[k, :, ph, pw]
                for iy in range(grid_h):
                    y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        if y < -1 or y > height or x < -1 or x > width:
                            continue
                        yy, xx = max(y, 0.0), max(x, 0.0)
                        y_lo, x_lo = int(yy), int(xx)
                        if y_lo >= height - 1:
                            y_lo = y_hi = height - 1
                            yy = float(y_lo)
                        else:
                            y_hi = y_lo + 1
                        if x_lo >= width - 1:
                            x_lo = x_hi = width - 1
                            xx = float(x_lo)
                        else:
                            x_hi = x_lo + 1
                        ly, lx = yy - y_lo, xx - x_lo
                        hy, hx = 1 - ly, 1 - lx
                        for r, c, w in ((y_lo, x_lo, hy * hx), (y_lo, x_hi, hy * lx),
                                        (y_hi, x_lo, ly * hx), (y_hi, x_hi, ly * lx)):
                            out[int(b), :, r, c] += g * w / count
    return out


SCALES = [1.0, 0.5, 0.25, 1 / 3]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_float32_bit_identical_to_torchvision(aligned, sampling_ratio, scale):
    assert not ra.parallel_roi_align_backward_active()  # torchvision's own kernel below
    args = backward_args(torch.float32, aligned, sampling_ratio, scale)
    ours = _C.roi_align_backward_cpu(*args)
    theirs = torchvision_backward(*args)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("aligned", [True, False])
def test_float64_and_float16_bit_identical_to_torchvision(dtype, aligned):
    for sampling_ratio in (0, 3):
        args = backward_args(dtype, aligned, sampling_ratio, 0.5, seed=1)
        ours, theirs = _C.roi_align_backward_cpu(*args), torchvision_backward(*args)
        assert ours.dtype == dtype
        assert torch.equal(ours, theirs), (ours.double() - theirs.double()).abs().max()


@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 3])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_float64_matches_reference(aligned, sampling_ratio, scale):
    args = backward_args(torch.float64, aligned, sampling_ratio, scale, num_rois=6, pooled=(2, 3))
    ours = _C.roi_align_backward_cpu(*args)
    expected = reference_backward(*args)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_threads_and_layout_do_not_change_the_result():
    """Enough work for several threads; results equal torchvision's at 1 and 2 threads, and for
    a non-contiguous grad."""
    args = backward_args(torch.float32, True, 2, 0.25, channels=16, height=24, width=30,
                         pooled=(7, 7), num_rois=64, seed=2)
    expected = torchvision_backward(*args)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(_C.roi_align_backward_cpu(*args), expected)
    finally:
        torch.set_num_threads(threads)
    grad = args[0]
    strided = grad.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not strided.is_contiguous()
    assert torch.equal(_C.roi_align_backward_cpu(strided, *args[1:]), expected)


def test_empty_inputs():
    args = list(backward_args(torch.float32, True, 0, 1.0))
    args[0], args[1] = args[0][:0], args[1][:0]
    out = _C.roi_align_backward_cpu(*args)
    assert out.shape == (2, 3, 11, 14) and not out.any()
    assert torch.equal(out, torchvision_backward(*args))


def test_invalid_inputs_are_rejected():
    args = list(backward_args(torch.float32, True, 0, 1.0))
    with pytest.raises(RuntimeError, match="BFloat16"):  # as torchvision's kernel
        _C.roi_align_backward_cpu(args[0].bfloat16(), args[1].bfloat16(), *args[2:])
    with pytest.raises(RuntimeError, match="same dtype"):
        _C.roi_align_backward_cpu(args[0], args[1].double(), *args[2:])
    bad = args[1].clone()
    bad[0, 0] = 2  # batch_size is 2
    with pytest.raises(RuntimeError, match="batch index 2"):
        _C.roi_align_backward_cpu(args[0], bad, *args[2:])
    with pytest.raises(RuntimeError, match="grad is"):
        _C.roi_align_backward_cpu(args[0][:, :2], *args[1:])


def test_opt_out_and_missing_extension_register_nothing(monkeypatch):
    monkeypatch.setenv(ra.ENV_VAR, "0")
    assert ra.use_parallel_roi_align_backward() is False
    monkeypatch.setenv(ra.ENV_VAR, "1")
    monkeypatch.setattr(ra, "compiled_module", lambda: None)
    assert ra.use_parallel_roi_align_backward() is False
    assert not ra.parallel_roi_align_backward_active()


# Runs with the compiled kernel registered (process-global) and prints {check: "ok" or traceback}
# as JSON on its last line.
REGISTERED_CHECKS = r"""
import json, traceback, warnings
import torch, torchvision
from detectron2.layers import ROIAlign
from soft_d2.ops import roi_align as ra

torch.set_num_threads(2)
results = {}

def check(fn):
    try:
        fn()
        results[fn.__name__] = "ok"
    except Exception:
        results[fn.__name__] = traceback.format_exc()

gen = torch.Generator().manual_seed(0)
x = torch.randn(2, 8, 20, 24, generator=gen)
boxes = torch.rand(30, 4, generator=gen) * 60 - 5
rois = torch.cat([torch.randint(0, 2, (30, 1), generator=gen).float(),
                  torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], 1)
upstream = torch.randn(30, 8, 7, 7, generator=gen)
args = (upstream, rois, 0.25, 7, 7, 2, 8, 20, 24, 0, True)

def d2_grad(aligned):
    inp = x.clone().requires_grad_()
    ROIAlign((7, 7), 0.25, 0, aligned=aligned)(inp, rois).backward(upstream)
    return inp.grad

# torchvision's kernel, before the registration
before = {aligned: d2_grad(aligned) for aligned in (True, False)}
direct_before = torch.ops.torchvision._roi_align_backward(*args)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = ra.use_parallel_roi_align_backward()
second = ra.use_parallel_roi_align_backward()
real = ra.compiled_module
calls = []

class Counting:
    def roi_align_backward_cpu(self, *a):
        calls.append(a[4:])
        return real().roi_align_backward_cpu(*a)

class Failing:
    def roi_align_backward_cpu(self, *a):
        raise RuntimeError("sentinel engine failure")

def registration_is_idempotent_and_silent():
    assert first is True and second is True, (first, second)
    assert ra.parallel_roi_align_backward_active()
    assert not caught, [str(w.message) for w in caught]

def detectron2_backward_runs_our_kernel_with_identical_results():
    ra.compiled_module = lambda: Counting()
    try:
        for aligned in (True, False):
            calls.clear()
            after = d2_grad(aligned)
            assert len(calls) == 1, calls
            assert torch.equal(after, before[aligned]), (after - before[aligned]).abs().max()
    finally:
        ra.compiled_module = real

def a_failing_engine_fails_the_backward():
    ra.compiled_module = lambda: Failing()
    try:
        d2_grad(True)
    except RuntimeError as err:
        assert "sentinel engine failure" in str(err), err
    else:
        raise AssertionError("the backward did not reach the registered kernel")
    finally:
        ra.compiled_module = real

def direct_op_call_equals_torchvision():
    assert torch.equal(torch.ops.torchvision._roi_align_backward(*args), direct_before)

def gradcheck_float64():
    ra.compiled_module = lambda: Counting()
    calls.clear()
    try:
        inp = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
        small = torch.tensor([[0, 0.3, 0.7, 4.2, 5.1], [0, -1.5, 2.0, 3.0, 8.5]], dtype=torch.float64)
        for aligned in (True, False):
            for sampling_ratio in (0, 2):
                f = lambda t: torchvision.ops.roi_align(t, small, (3, 2), 0.8, sampling_ratio, aligned)
                assert torch.autograd.gradcheck(f, (inp,), eps=1e-6, atol=1e-8)
        assert calls, "gradcheck never reached the registered kernel"
    finally:
        ra.compiled_module = real

for fn in (registration_is_idempotent_and_silent,
           detectron2_backward_runs_our_kernel_with_identical_results,
           a_failing_engine_fails_the_backward, direct_op_call_equals_torchvision, gradcheck_float64):
    check(fn)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def registered():
    pytest.importorskip("detectron2")
    env = {**os.environ, ra.ENV_VAR: "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", REGISTERED_CHECKS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [
    "registration_is_idempotent_and_silent",
    "detectron2_backward_runs_our_kernel_with_identical_results",
    "a_failing_engine_fails_the_backward",
    "direct_op_call_equals_torchvision",
    "gradcheck_float64",
])
def test_registered_kernel(registered, name):
    assert registered.get(name) == "ok", registered.get(name, f"{name} did not run")
