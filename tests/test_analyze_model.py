"""FLOP counting (tools/analyze_model.py, soft_d2.d2.flops): the tool on the quickstart detectors and
UperNet, no unsupported operator inside the SOFT backbone on any kernel path, and the counted attention
against an analytic count written here from the layers' shapes."""
from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from detection_helpers import QUICKSTART_RCNN, QUICKSTART_RETINANET, ROOT, SMALL_INPUT, make_small_builtin
from segmentation_helpers import QUICKSTART_UPERNET, make_small_sem_seg
from soft_d2 import ops
from soft_d2.config import load_config
from soft_d2.d2 import SOFT_FLOP_HANDLES, soft_flop_count_analysis
from soft_d2.model.attention import SoftAttention, SoftmaxAttention
from soft_d2.ops import newton, streamed_torch

needs_engine = pytest.mark.skipif(not ops.compiled_available(), reason="needs the compiled soft_d2._C")
_spec = importlib.util.spec_from_file_location("analyze_model", os.path.join(ROOT, "tools", "analyze_model.py"))
analyze_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze_model)

# Op names that only SOFT's code puts into a trace: none may go unsupported or be warned about.
SOFT_OP_MARKERS = ("soft_d2::", "PythonOp", "baddbmm", "scaled_dot_product_attention", "gelu", "square",
                   "aten::sum", "exp", "feature_dropout")


class FvcoreWarnings(logging.Handler):
    """fvcore's own warnings, whatever other tests did to its logger's propagation."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def fvcore_log():
    handler = FvcoreWarnings()
    logger = logging.getLogger("fvcore.nn.jit_analysis")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture
def shapes_data(tmp_path, monkeypatch):
    make_small_builtin(str(tmp_path), train_images=1, val_images=2)
    make_small_sem_seg(str(tmp_path), train_images=1, val_images=2)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))


def soft_warnings(messages: list[str]) -> list[str]:
    return [m for m in messages if "Unsupported operator" in m and any(k in m for k in SOFT_OP_MARKERS)]


# ------------------------------------------------------------------------------------ the tool
@pytest.mark.parametrize("config, images", [(QUICKSTART_RETINANET, 2), (QUICKSTART_RCNN, 1)],
                         ids=["retinanet", "mask_rcnn"])
def test_tool_reports_flops_and_parameters_of_quickstart_detector(config, images, shapes_data, fvcore_log, capsys):
    argv = ["--config-file", config, "--tasks", "flop", "parameter", "-n", str(images), *SMALL_INPUT]
    results = analyze_model.main(argv)
    out = capsys.readouterr().out
    flops = results["flop"]
    assert len(flops["totals"]) == images and all(t > 1e8 for t in flops["totals"])
    assert "Total GFLOPs:" in out and f"over {images} image(s)" in out and "backbone.bottom_up" in out
    assert {"newton_solve", "conv", "linear"} <= set(flops["by_operator"])
    assert "backbone.bottom_up.model.stages" in results["parameter"] and "Parameters:" in out
    assert not flops["first"].unsupported_ops("model.backbone.bottom_up"), "an op of the SOFT backbone went uncounted"
    assert fvcore_log and not soft_warnings(fvcore_log), fvcore_log  # fvcore did warn (Detectron2's ops), not of ours


def test_tool_reports_flops_of_quickstart_upernet(shapes_data, fvcore_log):
    """UperNet, and the other two tasks of Detectron2's tool."""
    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
    results = analyze_model.main(["--config-file", QUICKSTART_UPERNET, "--tasks", "flop", "activation", "structure",
                                  "-n", "1", *opts])
    assert results["activation"][0] > 0.1 and "UperNetHead" in results["structure"]
    analysis = results["flop"]["first"]
    assert analysis.total("model.sem_seg_head") > 0 and analysis.total("model.backbone") > 0
    assert not analysis.unsupported_ops("model.backbone") and not analysis.unsupported_ops("model.sem_seg_head")
    assert not soft_warnings(fvcore_log), fvcore_log


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "flop"], "need --config-file"),
    (["--config-file", "configs/nope.yaml", "--tasks", "flop"], "no such file"),
    (["--config-file", QUICKSTART_RETINANET], "needs --tasks"),
    (["--config-file", QUICKSTART_RETINANET, "--tasks", "flop", "MODEL.WEIGHTS", "x"], "after `--`"),
    (["--config-file", QUICKSTART_RETINANET, "--tasks", "flop", "-n", "0"], "at least 1"),
    (["--config-file", QUICKSTART_RETINANET, "--tasks", "flop", "--variants", "soft_tiny"],
     "only for the variant table"),
])
def test_tool_rejects_bad_arguments_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit):
        analyze_model.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("opts, error, message", [
    (["MODEL.WEIGHTS", "no/such.pth"], FileNotFoundError, 'MODEL.WEIGHTS ""'),
    (["DATASETS.TEST", "()"], analyze_model.ConfigError, "set one, e.g. DATASETS.TEST"),
])
def test_tool_names_the_config_key_to_fix(opts, error, message, shapes_data):
    with pytest.raises(error, match=message):
        analyze_model.main(["--config-file", QUICKSTART_RETINANET, "--tasks", "flop", "--", *opts])


def test_tool_accepts_overrides_after_double_dash():
    args = analyze_model.parse_args(["--config-file", QUICKSTART_RETINANET, "--tasks", "flop", "--", "SEED", "3"])
    assert args.tasks == ["flop"] and args.opts == ["SEED", "3"]


def test_variant_table_matches_the_published_gflops(capsys):
    """Without a config: SOFT-Tiny-Norm at 224 within 5% of the paper's 1.9 GFLOPs."""
    analyze_model.main(["--variants", "soft_norm_tiny", "--detection-size", "64x96"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("soft_norm_tiny"))
    params, at224, published = row.split()[1:4]
    assert params == "13,069,056" and published == "1.9"
    assert abs(float(at224) - 1.9) / 1.9 < 0.05, row


# ------------------------------------------------------------ the attention against shapes
def analytic_soft_attention(n: int, c: int, h: int, m: int, sr: int, k: int, numerics: str,
                            g_per_product: bool) -> tuple[int, int]:
    """(whole layer, Gaussian products + Newton) in multiply-adds, batch 1, written from the shapes.

    Kernel products: G(Q, L) is N x m from an N x m x d GEMM; the summary G^T V and the output
    G (M S) are N x m x d each. The dense torch path forms G once, the compiled engine and the
    streamed path once per product. G(L, L): m x m x d. Newton on a CPU (eigh, soft_d2.d2.flops):
    7/3 m^3, + m^3 for the halving start, + 2 m^2 d to apply it.
    """
    d = c // h
    products = h * ((4 if g_per_product else 3) * n * m * d + m * m * d)
    newton_solve = h * (round(7 / 3 * m**3) + (m**3 if numerics == "halving" else 0) + 2 * m * m * d)
    projections = 3 * n * c * c  # q, v, proj
    landmark_conv = h * m * d * d * sr * sr  # stride-s conv, d -> d channels, per head
    v_conv = n * c * k * k  # depthwise
    attention = products + newton_solve
    return projections + landmark_conv + v_conv + attention, attention


def analytic_softmax_attention(n: int, c: int) -> int:
    return 4 * n * c * c + 2 * n * n * c  # q, kv (2), proj; q k^T and weights @ v


@pytest.fixture
def kernel_path(request, monkeypatch):
    """(MODEL.SOFT.KERNEL_METHOD, G formed per product): the dense torch formula, the streamed torch path
    (forced below its size threshold) or the compiled engine (always)."""
    method = request.param
    if method == "torch-streamed":
        monkeypatch.setattr(streamed_torch, "STREAM_ELEMENTS", 4096)  # every SOFT stage at 160 px, in 2-7 chunks
    if method == "compiled":
        monkeypatch.setattr(streamed_torch, "STREAM_ELEMENTS", 0)
    return method.split("-")[0], method != "torch"


@pytest.mark.parametrize("kernel_path, variant", [
    ("torch", "soft_norm_tiny"), ("torch", "soft_tiny"), ("torch-streamed", "soft_norm_tiny"),
    pytest.param("compiled", "soft_norm_tiny", marks=needs_engine),
], indirect=["kernel_path"])
def test_counted_attention_matches_analytic_count(kernel_path, variant, shapes_data, fvcore_log):
    """Every attention layer of the quickstart RetinaNet's backbone (on a 160 px test image, landmark
    bound lowered to 16 so that it is active in all of stages 1-3) against the analytic count from its
    recorded shapes, within 2%."""
    method, g_per_product = kernel_path
    cfg = load_config(QUICKSTART_RETINANET, ["MODEL.SOFT.KERNEL_METHOD", method, "MODEL.SOFT.VARIANT", variant,
                                             "MODEL.SOFT.MAX_LANDMARKS", "16", "INPUT.MIN_SIZE_TEST", "160",
                                             "DATALOADER.NUM_WORKERS", "0"])
    model = analyze_model.build_analyzed_model(cfg)
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, (SoftAttention, SoftmaxAttention)):
            module.register_forward_hook(  # sizes are traced values under jit: int() them
                lambda mod, args, out, name=name: shapes.update({name: tuple(int(s) for s in args[0].shape)}))
        if isinstance(module, SoftAttention):  # m from the landmark layer's output [B, heads, m, d]
            module.landmarks.register_forward_hook(
                lambda mod, args, out, name=name: shapes.update({name + ".m": int(out.shape[2])}))
    batch = next(iter(analyze_model.evaluation_batches(cfg)))
    analysis = soft_flop_count_analysis(model, batch)
    by_module, by_op = analysis.by_module(), analysis.by_module_and_operator()
    assert not analysis.unsupported_ops("model.backbone.bottom_up") and not soft_warnings(fvcore_log), fvcore_log

    kernel_ops = {"gaussian_kernel", "kernel_matmul", "kernel_t_matmul", "bmm", "baddbmm", "newton_solve"}
    checked, bounded, errors = 0, 0, {}
    for name, module in model.named_modules():
        counted = by_module[f"model.{name}"] if name in shapes else None
        if isinstance(module, SoftAttention):
            _, n, c = shapes[name]
            m = shapes[name + ".m"]
            bounded += m <= cfg.MODEL.SOFT.MAX_LANDMARKS < (n // module.landmarks.sr_ratio**2)
            layer, attention = analytic_soft_attention(n, c, module.num_heads, m, module.landmarks.sr_ratio,
                                                       module.v_conv.kernel_size[0], module.newton_numerics,
                                                       g_per_product)
            counted_attention = sum(v for op, v in by_op[f"model.{name}"].items() if op in kernel_ops)
            errors[name + " (products + Newton)"] = counted_attention / attention - 1
        elif isinstance(module, SoftmaxAttention):
            _, n, c = shapes[name]
            layer = analytic_softmax_attention(n, c)
        else:
            continue
        errors[name] = counted / layer - 1
        checked += 1
    assert checked == 8 and bounded == 6  # depths (1, 2, 3, 2); the landmark bound ran in every SOFT layer
    assert all(abs(e) < 0.02 for e in errors.values()), {k: f"{e:+.2%}" for k, e in errors.items()}


# ------------------------------------------------------------------------- the Newton handles
class _Solve(torch.nn.Module):
    def __init__(self, solver: str, numerics: str):
        super().__init__()
        self.solver, self.numerics = solver, numerics

    def forward(self, a, rhs):
        return ops.newton_solve(a, rhs, max_iter=5, numerics=self.numerics, solver=self.solver)


def spd_stack(b: int, h: int, m: int) -> torch.Tensor:
    x = torch.randn(b, h, m, 4)
    return ops.gaussian_kernel(x, x, "torch")


@pytest.mark.parametrize("numerics", ["regularized", "halving"])
def test_newton_squaring_count_equals_the_gemms_it_runs(numerics):
    """The squaring path's handle against PyTorch's dispatcher count of the same solve (2 flops per MAC)."""
    a, rhs = spd_stack(2, 3, 12), torch.randn(2, 3, 12, 5)
    with FlopCounterMode(display=False) as dispatcher:
        newton.newton_solve_forward(a.double(), rhs.double(), 5, numerics)
    analysis = soft_flop_count_analysis(_Solve("squaring", numerics), (a, rhs))
    expected = 2 * 3 * (5 * 12**3 + 6 * 12**2 * 5)  # B h (n m^3 + (n + 1) m^2 e)
    assert analysis.by_operator()["newton_solve"] == dispatcher.get_total_flops() // 2 == expected


def test_newton_eigh_count_follows_the_documented_estimate():
    a, rhs = spd_stack(1, 2, 10), torch.randn(1, 2, 10, 3)
    counted = soft_flop_count_analysis(_Solve("eigh", "halving"), (a, rhs)).by_operator()["newton_solve"]
    assert counted == 2 * (round(7 / 3 * 1000) + 1000 + 2 * 100 * 3)


@torch.library.custom_op("soft_d2_flops_test::newton_solve", mutates_args=())
def _solve_op(a: torch.Tensor, rhs: torch.Tensor, max_iter: int, numerics: str, solver: str) -> torch.Tensor:
    return newton.newton_solve_forward(a, rhs, max_iter, numerics)


@_solve_op.register_fake
def _(a, rhs, max_iter, numerics, solver):
    return torch.empty_like(rhs)


def test_newton_handle_reads_a_custom_operators_settings():
    """As a custom operator (soft_d2::newton_solve's schema) the settings are constant inputs, not a
    PythonOp's scalar arguments; "auto" resolves as newton_solve does (CPU: eigh)."""
    class Op(torch.nn.Module):
        def forward(self, a, rhs):
            return torch.ops.soft_d2_flops_test.newton_solve(a, rhs, 4, "regularized", "auto")

    a, rhs = spd_stack(1, 1, 8), torch.randn(1, 1, 8, 2)
    analysis = soft_flop_count_analysis(Op(), (a, rhs))
    analysis.set_op_handle("soft_d2_flops_test::newton_solve", SOFT_FLOP_HANDLES["soft_d2::newton_solve"])
    assert analysis.by_operator()["newton_solve"] == round(7 / 3 * 512) + 2 * 64 * 2
