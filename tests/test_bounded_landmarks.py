"""The bounded-landmark mode (``max_landmarks``, MODEL.SOFT.MAX_LANDMARKS) that every detection and
segmentation input above ~320 px runs: the landmark grid at detection sizes, bit-identity with
the release's function at or below the bound, a naive float64 reference of the pooled landmarks,
gradients, batch independence, and the setting's validation and reach."""
from __future__ import annotations

import math

import pytest
import torch

from soft_d2.model.attention import ConvLandmarks, SoftAttention
from soft_d2.model.landmark_grid import bounded_landmark_grid
from soft_d2.model.blocks import SoftBlock

from helpers import rel_err, small_model
from spec_reference import bounded_grid, naive_landmarks, naive_soft_block, randomize_norms

DETECTION_SIZES = [(800, 1344), (1333, 800), (512, 2048), (97, 1500)]


def _stage_grids(height: int, width: int) -> list[tuple[int, int]]:
    """Token grids of stages 1-3 (stride 4, 8, 16; every stride-2 conv rounds up)."""
    grids, h, w = [], height, width
    for i in range(3):
        for _ in range(2 if i == 0 else 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        grids.append((h, w))
    return grids


def _record_landmarks(model):
    """Hooks on every landmark layer: [(layer, query grid, resampled grid, landmarks)] per forward."""
    seen = []

    def hook(layer, args, out):
        q, hw = args
        seen.append((layer, tuple(hw), layer.input_size(*hw), out.shape[2]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ConvLandmarks)]
    return seen, handles


# ------------------------------------------------------------------------------ the landmark grid
GRIDS = [(100, 168), (167, 100), (64, 256), (3, 46), (46, 3), (1, 500), (500, 1), (25, 21), (13, 13), (77, 77)]
GRID_CASES = [(r, c, bound) for r, c in GRIDS for bound in (1, 7, 49, 100, 196, 400) if r * c > bound]


@pytest.mark.parametrize("rows,cols,bound", GRID_CASES)
def test_bounded_grid_rule(rows, cols, bound):
    """At most ``bound`` cells; both sides scaled by sqrt(bound / cells) and rounded down, so the
    aspect ratio is kept to within one cell per side; a short side below one cell becomes 1 and
    the long side takes what the bound allows."""
    r, c = bounded_landmark_grid(rows, cols, bound)
    assert 1 <= r <= rows and 1 <= c <= cols and r * c <= bound
    (short, got_short), (long, got_long) = sorted([(rows, r), (cols, c)])
    if bound * short >= long:  # short * scale >= 1, scale = sqrt(bound / (rows * cols))
        # got = floor(side * scale) exactly: got^2 <= side^2 scale^2 < (got + 1)^2, in integers
        assert got_short ** 2 * long <= bound * short < (got_short + 1) ** 2 * long
        assert got_long ** 2 * short <= bound * long < (got_long + 1) ** 2 * short
    else:
        assert got_short == 1 and got_long == min(long, bound)
    assert (r + 1) * (c + 1) > bound  # not needlessly coarse


def test_bounded_grid_is_exact_at_whole_numbers():
    # 77 x 77 under 100: scale * 77 is exactly 10, which floating point gives as 9.999...
    assert bounded_landmark_grid(77, 77, 100) == (10, 10)
    assert bounded_landmark_grid(13, 117, 100) == (3, 30) and bounded_landmark_grid(117, 13, 100) == (30, 3)


@pytest.mark.parametrize("hw", DETECTION_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_landmarks_per_stage_at_detection_sizes(hw):
    bound = 100
    model = small_model(True, embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1), newton_max_iter=1,
                        max_landmarks=bound)
    seen, handles = _record_landmarks(model)
    with torch.no_grad():
        model.forward_intermediates(torch.randn(1, 3, *hw), intermediates_only=True, indices=[2], stop_early=True)
    for h in handles:
        h.remove()
    assert [grid for _, grid, _, _ in seen] == _stage_grids(*hw)
    for layer, (gh, gw), (ph, pw), m in seen:
        s = layer.sr_ratio
        faithful = max(gh // s, 1) * max(gw // s, 1)
        assert m <= bound
        if faithful > bound:  # pooled to (s * rows, s * cols), the landmark grid keeping the aspect ratio
            rows, cols = ph // s, pw // s
            assert ph % s == 0 and pw % s == 0 and m == rows * cols
            scale = math.sqrt(bound / faithful)
            assert abs(rows - gh // s * scale) < 1 and abs(cols - gw // s * scale) < 1
        else:
            assert m == faithful and (ph, pw) == (gh, gw)
    assert seen[0][3] < max(seen[0][1][0] // 8, 1) * max(seen[0][1][1] // 8, 1), "the bound must be active"


# ----------------------------------------------------------- the faithful function at or below the bound
@pytest.mark.parametrize("normalized", [False, True])
def test_at_or_below_the_bound_the_output_is_bit_identical(normalized):
    # 224 x 224: 7 x 7 = 49 landmarks in every SOFT stage.
    x = torch.randn(2, 3, 224, 224)
    faithful = small_model(normalized)
    bounded = small_model(normalized)
    bounded.load_state_dict(faithful.state_dict())
    with torch.no_grad():
        want = faithful.forward_intermediates(x)
        for bound in (49, 50, 10_000, [49, 49, 49], [49, 0, None]):
            bounded.set_max_landmarks(bound)
            got = bounded.forward_intermediates(x)
            assert torch.equal(got[0], want[0]), bound
            assert all(torch.equal(a, b) for a, b in zip(got[1], want[1])), bound
        # one landmark fewer than the grid has: pooling starts, and the maps change in every stage
        # from the bounded one on
        for stage in range(3):
            bounds = [None] * 3
            bounds[stage] = 48
            bounded.set_max_landmarks(bounds)
            maps = bounded.forward_intermediates(x, intermediates_only=True)
            assert [torch.equal(a, b) for a, b in zip(maps, want[1])] == [i < stage for i in range(4)], stage


# ------------------------------------------------------------------- a naive float64 reference
CASES = [  # (query grid, sr_ratio, bound): odd grids, tall and wide, pooling by non-divisors,
    ((37, 23), 4, 10),  # a side shorter than s stretched while the other shrinks
    ((37, 23), 4, 44),
    ((11, 53), 2, 7),
    ((11, 53), 2, 30),
    ((50, 9), 8, 4),
    ((5, 70), 8, 5),
    ((29, 31), 2, 100),
    ((29, 31), 2, 210),  # at the bound (14 x 15): unpooled, the release's function
]


@pytest.mark.parametrize("normalized,numerics", [(False, "regularized"), (True, "halving")])
@pytest.mark.parametrize("hw,sr,bound", CASES, ids=lambda v: str(v))
def test_bounded_block_matches_naive_float64(hw, sr, bound, normalized, numerics):
    gen = torch.Generator().manual_seed(11)
    block = SoftBlock(32, 2, 4, sr, 3, normalized=normalized, newton_numerics=numerics).double().eval()
    randomize_norms(block, gen)
    block.attn.landmarks.max_landmarks = bound
    x = torch.randn(2, hw[0] * hw[1], 32, generator=gen, dtype=torch.float64)
    size = bounded_grid(*hw, sr, bound)
    assert (size != hw) == (max(hw[0] // sr, 1) * max(hw[1] // sr, 1) > bound or min(hw) < sr)
    with torch.no_grad():
        ours = block(x, hw)
        naive = naive_soft_block(block, x, hw, normalized, numerics, 20, bound=bound)
    err = ((ours - naive).abs().max() / naive.abs().max()).item()
    assert err < 1e-10, err


@pytest.mark.parametrize("hw,sr,bound", CASES[:6], ids=lambda v: str(v))
def test_pooled_landmarks_match_naive_pooling_and_conv(hw, sr, bound):
    gen = torch.Generator().manual_seed(12)
    layer = ConvLandmarks(6, sr).double()
    randomize_norms(layer, gen)
    layer.max_landmarks = bound
    q = torch.randn(2, 3, hw[0] * hw[1], 6, generator=gen, dtype=torch.float64)
    ours = layer(q, hw)
    rows, cols = (v // sr for v in bounded_grid(*hw, sr, bound))
    assert ours.shape == (2, 3, rows * cols, 6) and rows * cols <= bound
    for b in range(2):
        for h in range(3):
            naive = naive_landmarks(q[b, h], hw, layer, bound)
            torch.testing.assert_close(ours[b, h], naive, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ gradients
def test_gradcheck_through_pooled_landmarks():
    gen = torch.Generator().manual_seed(13)
    layer = ConvLandmarks(3, 2).double()
    randomize_norms(layer, gen)
    layer.max_landmarks = 9  # 9 x 9 grid: 4 x 4 landmarks, pooled to 6 x 6 for 3 x 3
    q = torch.randn(1, 2, 9 * 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = layer.conv.weight.detach().clone().requires_grad_()

    def f(q, w):
        return torch.func.functional_call(layer, {"conv.weight": w}, (q, (9, 9)))

    assert layer.input_size(9, 9) == (6, 6) and f(q, weight).shape == (1, 2, 9, 3)
    assert torch.autograd.gradcheck(f, (q, weight))


@pytest.mark.parametrize("normalized,numerics", [(False, "regularized"), (True, "halving")])
def test_gradcheck_bounded_attention(normalized, numerics):
    # Newton run to convergence (60 steps), where the closed-form inverse backward is the exact
    # derivative; pooling active (4 x 3 landmarks, bound 6: 2 x 2).
    gen = torch.Generator().manual_seed(14)
    attn = SoftAttention(8, 2, sr_ratio=2, v_conv_size=3, normalized=normalized, newton_numerics=numerics,
                         newton_max_iter=60, kernel_method="torch").double()
    randomize_norms(attn, gen)
    attn.landmarks.max_landmarks = 6
    hw = (9, 7)
    assert attn.landmarks.input_size(*hw) != hw
    x = torch.randn(1, 63, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t, hw), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalized", [False, True])
def test_bounded_mode_is_batch_independent(normalized):
    model = small_model(normalized, max_landmarks=6)  # 96 x 128: 3 x 4 landmarks per stage, pooled to 2 x 3
    x = torch.randn(3, 3, 96, 128) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    seen, handles = _record_landmarks(model)
    with torch.no_grad():
        batch = model.forward_intermediates(x)
        assert any(size != grid for _, grid, size, _ in seen), "pooling must be active"
        for i in range(3):
            alone = model.forward_intermediates(x[i:i + 1])
            assert rel_err(batch[0][i:i + 1], alone[0]) < 1e-5  # float32 GEMM blocking; the release: 2e-4
            for got, ref in zip(batch[1], alone[1]):
                assert rel_err(got[i:i + 1], ref) < 1e-5
    for h in handles:
        h.remove()


# ---------------------------------------------------------------------------- the setting itself
def _bounds_of(model):
    return [[blk.attn.landmarks.max_landmarks for blk in stage.blocks] for stage in model.stages[:3]]


def test_set_max_landmarks_values():
    model = small_model(depths=(1, 2, 2, 1))
    model.set_max_landmarks(100)
    assert _bounds_of(model) == [[100], [100, 100], [100, 100]] and model.max_landmarks == [100] * 3
    model.set_max_landmarks([49, 0, None])  # 0 and None: unbounded, per stage
    assert _bounds_of(model) == [[49], [None, None], [None, None]]
    model.set_max_landmarks(0)
    assert _bounds_of(model) == [[None], [None, None], [None, None]]
    model.set_max_landmarks((7, 8, 9))
    assert _bounds_of(model) == [[7], [8, 8], [9, 9]]
    for bad in (-1, 100.0, 99.5, True, [100, 100], [100, -5, 100], [100, 2.5, 100], "100"):
        with pytest.raises(ValueError, match="max_landmarks must be a non-negative int"):
            model.set_max_landmarks(bad)
    assert _bounds_of(model) == [[7], [8, 8], [9, 9]], "a refused value changes nothing"
    with pytest.raises(ValueError, match="max_landmarks"):
        small_model(max_landmarks=-3)


def test_config_value_reaches_every_attention_layer():
    from detectron2.modeling import build_backbone

    from detection_helpers import PUBLISHED, load_cfg

    for value, want in ((100, 100), (37, 37), (0, None)):
        cfg = load_cfg(PUBLISHED[4], ["MODEL.SOFT.MAX_LANDMARKS", str(value)])  # Mask R-CNN SOFT-Tiny-Norm
        soft = build_backbone(cfg).bottom_up.model
        layers = [m for m in soft.modules() if isinstance(m, ConvLandmarks)]
        assert len(layers) == 1 + 2 + 3 and all(m.max_landmarks == want for m in layers), value
    for bad in ("-1", "100.0", "[100, 0, 100]"):
        with pytest.raises(ValueError, match="MAX_LANDMARKS"):
            build_backbone(load_cfg(PUBLISHED[4], ["MODEL.SOFT.MAX_LANDMARKS", bad]))
