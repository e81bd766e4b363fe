"""kernel_method dispatch, the missing-extension fallback, and the ops inside SOFT attention."""
from __future__ import annotations

import warnings

import pytest
import torch

from soft_d2 import ops
from soft_d2.model.attention import SoftAttention
from soft_d2.ops import extension
from soft_d2.ops.gaussian import gaussian_kernel_torch
from ops_reference import count_compiled_calls

needs_compiled = pytest.mark.skipif(not ops.compiled_available(), reason="compiled extension not built")


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setattr(extension, "_C", None)
    monkeypatch.setattr(extension, "_LOAD_ERROR", "No module named 'soft_d2._C'")
    monkeypatch.setattr(extension, "_warned", False)


def _inputs(n=50, m=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, n, 8, generator=gen) * 0.5
    lm = torch.randn(2, 2, m, 8, generator=gen) * 0.5
    v = torch.randn(2, 2, n, 8, generator=gen)
    mid = torch.randn(2, 2, m, m, generator=gen) / m
    return q, lm, v, (lambda s: torch.matmul(mid, s))


def test_method_validation():
    with pytest.raises(ValueError, match="kernel_method must be one of"):
        ops.check_kernel_method("cuda")
    assert ops.check_kernel_method("torch") == "torch"


@needs_compiled
def test_auto_picks_compiled_when_built():
    assert ops.check_kernel_method("auto") == "compiled"
    assert "compiled soft_d2._C" in ops.backend_summary()


def test_missing_extension_warns_once_and_falls_back(no_extension):
    q, lm, v, mid = _inputs()
    with pytest.warns(RuntimeWarning, match="soft_d2._C.*not available.*pure-PyTorch") as record:
        first = ops.nystrom_attention(q, lm, v, mid, "auto")
        ops.gaussian_kernel(lm, lm, "auto")
        ops.nystrom_attention(q, lm, v, mid, "auto")
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.equal(first, ops.nystrom_attention(q, lm, v, mid, "torch"))
    assert "pure PyTorch" in ops.backend_summary()


def test_compiled_without_extension_is_a_clear_error(no_extension):
    q, lm, v, mid = _inputs()
    with pytest.raises(RuntimeError, match="kernel_method='compiled'.*not available.*tools/install.sh"):
        ops.nystrom_attention(q, lm, v, mid, "compiled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'torch' asked for explicitly: no warning
        ops.nystrom_attention(q, lm, v, mid, "torch")


def test_small_torch_path_is_the_dense_formula():
    # The model's fidelity to the release rests on this path: G formed once, K1 @ mid(K1^T v).
    q, lm, v, mid = _inputs()
    k1 = gaussian_kernel_torch(q.double(), lm.double())
    summary = torch.matmul(k1.transpose(-1, -2), v.double()).float()
    want = torch.matmul(k1, mid(summary).double())
    got = ops.nystrom_attention(q, lm, v, mid, "torch")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def _count_calls(monkeypatch, name: str) -> list:
    """Wrap soft_d2.ops.<name> for this test; the returned list grows by one per call."""
    calls = []
    real = getattr(ops, name)

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(ops, name, spy)
    return calls


def test_large_torch_path_streams(monkeypatch):
    q, lm, v, mid = _inputs(n=300, m=20)
    dense = ops.nystrom_attention(q, lm, v, mid, "torch")
    monkeypatch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 1000)
    calls = _count_calls(monkeypatch, "gaussian_kernel_t_matmul_streamed")
    streamed = ops.nystrom_attention(q, lm, v, mid, "torch")
    assert calls, "above STREAM_ELEMENTS the torch path must stream"
    # float32 sums in another order (tiles, thread count): ~1e-6 apart (1.3e-6 seen with 16 threads)
    torch.testing.assert_close(streamed, dense, rtol=1e-5, atol=1e-5)


def _run(method, fn, monkeypatch):
    """fn() with ``method``'s engine: "compiled" is sent to the engine whatever the size (and must
    reach it), "torch" keeps the default dispatch (the dense formula at these sizes)."""
    with monkeypatch.context() as patch, count_compiled_calls() as counts:
        if method == "compiled":
            patch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 0)
        result = fn()
    assert (counts["kernel_t_matmul_forward"] > 0 and counts["kernel_matmul_backward"] > 0) == (method == "compiled"), \
        (method, counts)
    return result


@needs_compiled
@pytest.mark.parametrize("tile_rows", [None, 13])
def test_nystrom_compiled_matches_torch_with_grads(tile_rows, monkeypatch):
    q, lm, v, mid = _inputs(n=90, m=11, seed=4)
    outs, grads = [], []
    for method in ("torch", "compiled"):
        leaves = [t.clone().requires_grad_() for t in (q, lm, v)]

        def step():
            out = ops.nystrom_attention(*leaves, mid, method, tile_rows=tile_rows if method == "compiled" else None)
            out.square().sum().backward()
            return out

        outs.append(_run(method, step, monkeypatch))
        grads.append([t.grad for t in leaves])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for g_c, g_t in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_c, g_t, rtol=1e-4, atol=1e-5)


@needs_compiled
@pytest.mark.parametrize("normalized", [False, True])
def test_soft_attention_compiled_matches_torch(normalized, monkeypatch):
    torch.manual_seed(0)
    layers = {}
    for method in ("torch", "compiled"):
        torch.manual_seed(0)
        layers[method] = SoftAttention(64, 2, sr_ratio=4, v_conv_size=3, normalized=normalized,
                                       newton_numerics="halving" if normalized else "regularized",
                                       kernel_method=method)
    x = torch.randn(2, 16 * 12, 64)
    outs = {}
    for method, layer in layers.items():
        xx = x.clone().requires_grad_()

        def step():
            out = layer(xx, (16, 12))
            out.sum().backward()
            return out

        out = _run(method, step, monkeypatch)
        outs[method] = (out, xx.grad, layer.q.weight.grad)
    for got, want in zip(outs["compiled"], outs["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_compiled
def test_small_landmark_kernel_uses_the_dense_formula_on_every_path(monkeypatch):
    # The m x m landmark kernel is tiny; the compiled tile loop cost ~30x the torch formula there.
    _, lm, _, _ = _inputs(m=30)
    with count_compiled_calls() as calls:
        assert torch.equal(ops.gaussian_kernel(lm, lm, "compiled"), gaussian_kernel_torch(lm, lm))
    assert not calls
    with count_compiled_calls() as calls:
        ops.gaussian_kernel(lm, lm, "compiled", tile_rows=8)  # an explicit tile asks for the compiled op
    assert calls["gaussian_kernel_forward"] == 1
    monkeypatch.setattr("soft_d2.ops.streamed_torch.STREAM_ELEMENTS", 100)
    with count_compiled_calls() as calls:
        torch.testing.assert_close(ops.gaussian_kernel(lm, lm, "compiled"), gaussian_kernel_torch(lm, lm))
    assert calls["gaussian_kernel_forward"] == 1, "above STREAM_ELEMENTS the compiled op forms G"


def _set_kernel_method(model, method):
    for m in model.modules():
        if isinstance(m, SoftAttention):
            m.kernel_method = method


def _forward_backward(model, x):
    """Logits, the input's gradient and every parameter's gradient of sum(logits^2)."""
    model.zero_grad()
    x = x.clone().requires_grad_()
    out = model(x)
    out.square().sum().backward()
    return [out, x.grad] + [p.grad for p in model.parameters()]


@needs_compiled
@pytest.mark.parametrize("bound", [None, 16], ids=["faithful", "bounded"])
def test_soft_tiny_norm_compiled_matches_torch_and_float64(bound, monkeypatch):
    """The whole SOFT-Tiny-Norm on the compiled engine (every SOFT block's products and their
    backward; STREAM_ELEMENTS 0 sends these sizes to it) against the torch path and a float64
    run. 128 x 160: 4 x 5 landmarks per stage; bound 16: pooled to 3 x 4."""
    import copy

    import timm

    model = timm.create_model("soft_norm_tiny", num_classes=10, max_landmarks=bound).eval()
    x = torch.randn(2, 3, 128, 160)
    ref = copy.deepcopy(model).double()
    _set_kernel_method(ref, "torch")
    want = _forward_backward(ref, x.double())
    _set_kernel_method(model, "torch")
    torch_path = _run("torch", lambda: _forward_backward(model, x), monkeypatch)
    _set_kernel_method(model, "compiled")
    with count_compiled_calls() as counts:
        compiled = _run("compiled", lambda: _forward_backward(model, x), monkeypatch)
    blocks = sum(len(stage.blocks) for stage in model.stages[:3])
    for name in ("gaussian_kernel", "kernel_matmul", "kernel_t_matmul"):  # K2, K1 @ ., K1^T @ . per block
        assert counts[name + "_forward"] == counts[name + "_backward"] == blocks, counts
    for i, (c, t, w) in enumerate(zip(compiled, torch_path, want)):
        scale = w.abs().max().item()
        err_torch = (t.double() - w).abs().max().item() / scale
        err_compiled = (c.double() - w).abs().max().item() / scale
        # float32 against float64: both paths equally close (the compiled op sums in another order)
        # (measured: both <= 8e-6 of each tensor's largest entry)
        assert err_compiled < 5e-5 and err_compiled < 3 * err_torch + 5e-6, (i, err_compiled, err_torch)
        assert (c - t).abs().max().item() / scale < 5e-5, i
