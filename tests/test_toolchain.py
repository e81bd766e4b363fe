"""SOFT with the PyTorch 2 toolchain: the compiled engine as torch.library operators (schema, fake,
autograd), torch.compile without graph breaks on both kernel methods, FX symbolic tracing and
feature extraction (torchvision's and timm's), torch.export at fixed and dynamic sizes (faithful and bounded landmarks), ONNX, and
Inductor on the Newton solve."""
from __future__ import annotations

import itertools

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import soft_d2  # noqa: F401  (registers the SOFT variants with timm)
from ops_reference import count_compiled_calls
from soft_d2 import ops
from soft_d2.model.landmark_grid import exported_landmark_input_size, landmark_input_size
from soft_d2.ops import library, streamed_torch

needs_engine = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled soft_d2._C")
# A few thousand parameters: every code path of the family (SOFT stages with landmarks, stage 4 with
# the class token), fast enough to trace and compile in CI.
SMALL = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1))


def small_soft(kernel_method: str = "torch", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("soft_norm_tiny", kernel_method=kernel_method, **{**SMALL, **kwargs}).eval()


@pytest.fixture(params=["torch", pytest.param("compiled", marks=needs_engine)])
def kernel_method(request, monkeypatch):
    """Both kernel methods; "compiled" routes every Gaussian-kernel product to the engine (small
    inputs stay on the torch formula otherwise)."""
    if request.param == "compiled":
        monkeypatch.setattr(streamed_torch, "STREAM_ELEMENTS", 0)
        monkeypatch.setattr(ops, "STREAM_ELEMENTS", 0)
    return request.param


@needs_engine
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["gaussian_kernel", "kernel_matmul", "kernel_t_matmul"])
def test_engine_ops_pass_opcheck(name, dtype):
    """torch.library.opcheck: schema, fake (meta) implementation against the real one, autograd
    registration and AOT dispatch, static and dynamic."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 4, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(3, 5, 4, generator=g, dtype=dtype, requires_grad=True)
    third = {"kernel_matmul": torch.randn(3, 5, 6, generator=g, dtype=dtype, requires_grad=True),
             "kernel_t_matmul": torch.randn(3, 7, 6, generator=g, dtype=dtype, requires_grad=True)}
    args = (a, b) + ((third[name],) if name in third else ()) + (2,)
    op = getattr(torch.ops.soft_d2, name)
    with count_compiled_calls() as counts:
        torch.library.opcheck(op, args)
    assert counts[f"{name}_forward"] > 0 and counts[f"{name}_backward"] > 0
    out = getattr(library, name)(*args)
    assert out.dtype == dtype


def graph_breaks(model: torch.nn.Module, x: torch.Tensor):
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x)


def test_compile_sees_one_graph(kernel_method):
    """No graph break inside the model, bounded landmarks active at a detection-like aspect too; on
    the compiled method the graph holds the soft_d2 operators (not an opaque extension call)."""
    model = small_soft(kernel_method, max_landmarks=6)
    for size in ((64, 64), (96, 160)):
        explained = graph_breaks(model, torch.randn(2, 3, *size))
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
        targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
        soft_ops = {t for t in targets if "soft_d2" in t}
        assert bool(soft_ops) == (kernel_method == "compiled"), soft_ops


def test_compiled_model_matches_eager_forward_and_backward(kernel_method):
    """torch.compile(fullgraph=True) through AOTAutograd (the engine's fake and autograd formulas are
    what it traces), forward and input gradient against eager."""
    model = small_soft(kernel_method, num_classes=5)
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    reference = model(x)
    reference.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    assert torch.allclose(x.grad, grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


@pytest.mark.parametrize("max_landmarks", [None, 6])
def test_fx_symbolic_trace(max_landmarks):
    model = small_soft(max_landmarks=max_landmarks, num_classes=5)
    traced = torch.fx.symbolic_trace(model)
    for size in ((64, 96), (130, 70)):  # the traced graph is not specialised to one size
        x = torch.randn(2, 3, *size)
        assert torch.equal(traced(x), model(x))


def test_fx_feature_extraction_torchvision_and_timm():
    model = small_soft()
    nodes = {f"stages.{i}": f"res{i + 2}" for i in range(4)}
    extractor = create_feature_extractor(model, nodes)
    timm_fx = timm.create_model("soft_norm_tiny", features_only=True, feature_cls="fx", **SMALL).eval()
    missing, _ = timm_fx.graph_module.load_state_dict(model.state_dict(), strict=False)  # no head, no norm
    assert not missing
    for size in ((64, 96), (100, 52)):
        x = torch.randn(2, 3, *size)
        expected = model.forward_intermediates(x, intermediates_only=True)
        got = extractor(x)
        assert all(torch.equal(got[f"res{i + 2}"], e) for i, e in enumerate(expected))
        assert all(torch.equal(g, e) for g, e in zip(timm_fx(x), expected))
    assert type(timm_fx).__name__ == "FeatureGraphNet"


def test_eager_input_checks_stay_on_around_tracing():
    """The checks step aside for FX's Proxy only: eager calls still get the named error, before and
    after tracing, and torch.export traces them without failing."""
    model = small_soft()
    bad = torch.randn(1, 4, 64, 64)
    with pytest.raises(ValueError, match="3 input channels"):
        model(bad)
    torch.fx.symbolic_trace(model)
    with pytest.raises(ValueError, match="3 input channels"):
        model(bad)


def test_detectron2_backbone_fx_traces():
    pytest.importorskip("detectron2")
    from soft_d2.d2 import SoftBackbone

    backbone = SoftBackbone("soft_norm_tiny", kernel_method="torch", **SMALL).eval()
    traced = torch.fx.symbolic_trace(backbone)
    x = torch.randn(1, 3, 96, 128)
    expected, got = backbone(x), traced(x)
    assert list(got) == ["res2", "res3", "res4", "res5"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_export_fixed_size_matches_eager():
    model = small_soft(num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    exported = torch.export.export(model, (x,))
    assert torch.equal(exported.module()(x), model(x))


# Every landmark grid has at least 2 cells per side from 64 pixels on (stage 1: stride 4, then the
# stride-8 landmark convolution); below that sizes of 1 would be specialised.
DYNAMIC = {2: torch.export.Dim("height", min=64, max=4096), 3: torch.export.Dim("width", min=64, max=4096)}
OTHER_SIZES = ((64, 64), (96, 160), (130, 70), (224, 224))  # 224: the position embedding's own grid


def test_export_dynamic_size_matches_eager():
    """Faithful landmarks: one exported program serves every height and width (odd sizes, portrait,
    the embedding's native grid), with the same values as eager."""
    model = small_soft(num_classes=5)
    exported = torch.export.export(model, (torch.randn(2, 3, 128, 192),), dynamic_shapes=(DYNAMIC,))
    for size in OTHER_SIZES:
        x = torch.randn(2, 3, *size)
        assert torch.allclose(exported.module()(x), model(x), rtol=0, atol=1e-6), size


def bound_acts_in_stage_1(model, size) -> bool:
    grid = ((size[0] + 3) // 4, (size[1] + 3) // 4)
    return model.stages[0].blocks[0].attn.landmarks.input_size(*grid) != grid


def test_export_bounded_landmarks_dynamic_size_matches_eager():
    """Bounded landmarks: the landmark grid is computed inside the program, so one program serves
    sizes under the bound (the release's function) and above it (pooled), as eager does."""
    model = small_soft(num_classes=5, max_landmarks=6)
    assert {bound_acts_in_stage_1(model, size) for size in OTHER_SIZES} == {False, True}
    exported = torch.export.export(model, (torch.randn(1, 3, 128, 192),), dynamic_shapes=(DYNAMIC,))
    for size in OTHER_SIZES:
        x = torch.randn(1, 3, *size)
        assert torch.allclose(exported.module()(x), model(x), rtol=0, atol=1e-6), size


def test_exported_landmark_size_is_the_eager_one():
    """The tensor arithmetic an exported program computes the landmark grid with gives the size
    eager computes, on both sides of the bound and for sides shorter than the stride."""
    sides = (1, 3, 8, 13, 40, 77, 200, 336)
    for h, w, sr, bound in itertools.product(sides, sides, (2, 4, 8), (1, 6, 49, 100)):
        assert exported_landmark_input_size(h, w, sr, bound) == landmark_input_size(h, w, sr, bound), (h, w, sr, bound)


def test_onnx_dynamic_size_runs_in_onnxruntime():
    """ONNX (dynamo exporter) with dynamic height and width, run by onnxruntime against eager, with
    bounded landmarks (the faithful function goes through ONNX and onnxruntime inside the whole
    Mask R-CNN of tests/test_export_tool.py). The Newton solve is recorded as repeated squaring
    (ONNX has no eigendecomposition)."""
    max_landmarks = 6
    import onnxruntime as ort  # installed by tools/install.sh (requirements.txt)
    model = small_soft(num_classes=5, max_landmarks=max_landmarks)
    program = torch.onnx.export(model, (torch.randn(2, 3, 128, 192),), dynamo=True, dynamic_shapes=(DYNAMIC,),
                                input_names=["images"], output_names=["logits"], verbose=False)
    ops_used = {node.op_type for node in program.model_proto.graph.node}
    assert "MatMul" in ops_used and not any("eig" in op.lower() for op in ops_used)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for size in OTHER_SIZES:
        x = torch.randn(2, 3, *size)
        (logits,) = session.run(None, {"images": x.numpy()})
        assert torch.allclose(torch.from_numpy(logits), model(x), rtol=0, atol=1e-5), size


def test_torchscript_by_tracing_not_scripting():
    """TorchScript: torch.jit.trace at a fixed size matches eager; torch.jit.script is not supported
    (the Newton solve is a torch.autograd.Function with a closed-form gradient, which TorchScript
    cannot compile; PyTorch deprecates scripting for torch.export). If scripting ever works, the
    statement in docs/DEPLOYMENT.md must change with this test."""
    model = small_soft(num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    traced = torch.jit.trace(model, x, check_trace=False)
    assert torch.equal(traced(x), model(x))
    with pytest.raises(Exception, match="[Ll]ambda|autograd.Function|not supported"):
        torch.jit.script(model)


def test_spectral_factors_match_the_newton_recurrence_in_float64():
    """f(l) = alpha l (2 - w_0) ... (2 - w_{n-1}), w_{k+1} = (2 - w_k) w_k: the recurrence as the spec
    writes it, against the form the code evaluates (s_k = 1 - w_k, s_{k+1} = s_k^2)."""
    from soft_d2.ops import newton

    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    a = torch.exp(-torch.cdist(x, x) ** 2 / 2)  # Gaussian kernels: symmetric PSD, nearly singular
    for numerics in ("regularized", "halving"):
        u, f = newton.newton_spectral_factors(a, 20, numerics)
        p, alpha, _ = newton._scale(a, numerics)
        lam = torch.linalg.eigvalsh(p)
        w, expected = alpha.squeeze(-1) * lam ** 2, alpha.squeeze(-1) * lam
        for _ in range(20):
            expected = expected * (2 - w)
            w = (2 - w) * w
        torch.testing.assert_close(f, expected, rtol=1e-12, atol=1e-12)


INDUCTOR_NEWTON = """
import torch
from soft_d2.ops import newton
torch.manual_seed(0)
x = torch.randn(1, 2, 9, 4)
a = torch.exp(-torch.cdist(x, x) ** 2 / 2)
rhs = torch.randn(1, 2, 9, 3)
solve = lambda a, rhs: newton.newton_solve(a, rhs, 20, "regularized", solver="eigh")
torch.testing.assert_close(torch.compile(solve, fullgraph=True)(a, rhs), solve(a, rhs), rtol=1e-5, atol=1e-6)
"""


def test_inductor_compiles_the_newton_solve(tmp_path):
    """The default torch.compile backend on the eigendecomposition path (CPU's). Written as
    w_{k+1} = (2 - w_k) w_k, the 20-step eigenvalue recurrence costs Inductor's fusion 2^20 term
    evaluations (no compile within minutes); the form the code uses compiles in seconds."""
    import subprocess
    import sys

    script = tmp_path / "inductor_newton.py"
    script.write_text(INDUCTOR_NEWTON)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("Inductor did not compile the Newton solve in 300 s")
    assert done.returncode == 0, done.stderr[-3000:]
