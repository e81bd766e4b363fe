"""Our SOFT block and Newton numerics against naive float64 implementations written from the
spec (shared/soft-spec.md §2-5): explicit loops over images and heads, dense matrices, the
release's multiplication order, Python control flow for the halving."""
import pytest
import torch

from soft_d2.model.blocks import SoftBlock
from soft_d2.ops import newton_inverse
from spec_reference import naive_newton_halving, naive_newton_regularized, naive_soft_block, randomize_norms


@pytest.mark.parametrize("normalized,numerics", [(False, "regularized"), (True, "halving"), (False, "halving")])
@pytest.mark.parametrize("hw,sr", [((12, 10), 4), ((9, 7), 2)])
def test_soft_block_matches_naive_float64(normalized, numerics, hw, sr):
    gen = torch.Generator().manual_seed(3)
    block = SoftBlock(48, 3, 4, sr, 3, normalized=normalized, newton_numerics=numerics).double().eval()
    randomize_norms(block, gen)
    x = torch.randn(2, hw[0] * hw[1], 48, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x, hw)
        naive = naive_soft_block(block, x, hw, normalized, numerics, 20)
    err = ((ours - naive).abs().max() / naive.abs().max()).item()
    assert err < 1e-10, err


def _landmark_kernels(batch, heads, m, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    lm = scale * torch.randn(batch, heads, m, 8, generator=gen, dtype=torch.float64)
    return torch.exp(-torch.cdist(lm, lm) ** 2 / 2)


@pytest.mark.parametrize("iters", [0, 1, 20])
def test_newton_regularized_matches_naive(iters):
    k2 = _landmark_kernels(2, 3, 17, 0.5, 1)
    ours = newton_inverse(k2, iters, "regularized")
    for i in range(2):
        for h in range(3):
            naive = naive_newton_regularized(k2[i, h], iters)
            assert torch.allclose(ours[i, h], naive, rtol=1e-11, atol=1e-11 * naive.abs().max())


@pytest.mark.parametrize("scale", [0.3, 0.6, 1.5])
def test_newton_halving_matches_naive_per_image(scale):
    k2 = _landmark_kernels(3, 2, 25, scale, 2)
    ours = newton_inverse(k2, 20, "halving")
    halvings = []
    for i in range(3):
        naive, count = naive_newton_halving(k2[i], 20)
        halvings.append(count)
        assert torch.allclose(ours[i], naive, rtol=1e-10, atol=1e-10 * naive.abs().max())
    if scale == 0.3:
        assert max(halvings) > 0, "the halving path must be exercised"


def test_newton_halving_counts_are_per_image():
    # Two images needing different numbers of halvings in one batch: each keeps its own alpha.
    k2 = torch.cat([_landmark_kernels(1, 2, 30, 0.05, 4), _landmark_kernels(1, 2, 30, 2.0, 5)])
    ours = newton_inverse(k2, 20, "halving")
    counts = []
    for i in range(2):
        naive, count = naive_newton_halving(k2[i], 20)
        counts.append(count)
        assert torch.allclose(ours[i], naive, rtol=1e-10, atol=1e-10 * naive.abs().max())
    assert counts[0] != counts[1], counts


@pytest.mark.parametrize("solver", ["eigh", "squaring"])
@pytest.mark.parametrize("numerics", ["regularized", "halving"])
@pytest.mark.parametrize("iters", [0, 1, 5, 20])
def test_newton_solve_is_the_same_polynomial(numerics, iters, solver):
    # newton_solve evaluates V_n @ rhs by an eigendecomposition or by repeated squaring; in
    # float64 both must equal the release-order iteration to rounding, also far from convergence.
    k2 = _landmark_kernels(2, 3, 31, 0.4, 6)
    rhs = torch.randn(2, 3, 31, 5, dtype=torch.float64)
    from soft_d2.ops import newton_solve
    explicit = newton_inverse(k2, iters, numerics) @ rhs
    fast = newton_solve(k2, rhs, iters, numerics, solver=solver)
    assert ((fast - explicit).abs().max() / explicit.abs().max()).item() < 1e-10


@pytest.mark.parametrize("solver", ["eigh", "squaring"])
def test_newton_solve_float32_large_system_close_to_release_order(solver):
    # Above the float64 size limit the solve runs in float32: it must stay close to the exact
    # polynomial, at the level of the release's own float32 iteration (both ~1e-6 to 1e-5).
    k2 = _landmark_kernels(1, 2, 200, 0.6, 7)
    rhs = torch.randn(1, 2, 200, 8, dtype=torch.float64)
    from soft_d2.ops import newton_solve
    exact = newton_inverse(k2, 20, "halving") @ rhs
    got = newton_solve(k2.float(), rhs.float(), 20, "halving", solver=solver)
    release32 = newton_inverse(k2.float(), 20, "halving") @ rhs.float()
    assert got.dtype == torch.float32
    err = ((got.double() - exact).abs().max() / exact.abs().max()).item()
    release_err = ((release32.double() - exact).abs().max() / exact.abs().max()).item()
    assert err < max(10 * release_err, 1e-5), (err, release_err)
