"""The SOFT family: variants, timm interface, input sizes and input checks."""
import copy
import json

import pytest
import timm
import torch

import soft_d2
from soft_d2.model.blocks import residual_drop

from helpers import rel_err, small_model

ALL_VARIANTS = sorted(soft_d2.VARIANTS)


def test_ten_variants_registered_with_timm():
    assert len(ALL_VARIANTS) == 10
    listed = set(timm.list_models("soft_*"))
    assert set(ALL_VARIANTS) <= listed


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_parameter_counts_equal_release(reference, name):
    expected = json.loads((reference / "official_variants.json").read_text())["variants"][name]
    with torch.device("meta"):  # counts only: skip allocating and initializing ~100M weights
        model = timm.create_model(name)
        headless = timm.create_model(name, num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == expected["params_with_head"]
    assert sum(p.numel() for p in headless.parameters()) == expected["params_without_head"]
    assert sum(b.numel() for b in model.buffers()) == expected["buffer_elements"]


def test_timm_lists_the_family_by_module():
    assert set(timm.list_models(module="soft")) == set(ALL_VARIANTS)


def test_in1k_pretrained_tag():
    tagged = timm.list_models("soft_*", include_tags=True)
    assert set(tagged) >= {f"{name}.in1k" for name in ALL_VARIANTS}
    with torch.device("meta"):
        for name in ("soft_tiny.in1k", "soft_tiny"):  # the tag is the default one
            cfg = timm.create_model(name).pretrained_cfg
            assert cfg["tag"] == "in1k" and cfg["architecture"] == "soft_tiny"
    # No download URL: timm lists no weights it could fetch, and pretrained=True needs the
    # release file (pretrained_cfg_overlay=dict(file=...), tests/test_checkpoint.py).
    assert timm.list_pretrained("soft_*") == []
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("soft_tiny.in1k", pretrained=True)


def test_pretrained_cfg():
    model = timm.create_model("soft_norm_small")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["interpolation"] == "bicubic" and 0 < cfg["crop_pct"] <= 1
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 224, 224)


def test_create_model_overrides_build_custom_sizes():
    model = timm.create_model(
        "soft_norm_tiny", num_classes=5, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4),
        depths=(1, 1, 2, 1), mlp_ratios=(2, 2, 2, 2), sr_ratios=(4, 2, 2, 1), drop_path_rate=0.1,
        newton_max_iter=7, newton_numerics="regularized")
    attn = model.stages[2].blocks[1].attn
    assert model.stages[2].blocks[1].mlp.fc1.out_features == 96  # mlp_ratio 2 honoured in SOFT blocks
    assert attn.newton_max_iter == 7 and attn.newton_numerics == "regularized" and attn.normalized
    assert attn.landmarks.conv.stride == (2, 2)
    assert model.stages[0].blocks[0].attn.landmarks.conv.kernel_size == (4, 4)
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(model.stages[2].blocks[1].drop1, torch.nn.Dropout)  # the release's residual dropout
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_forward_features_head_and_intermediates():
    model = small_model()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 1 + 3 * 4, 64)
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 64)
        logits = model(x)
        final, maps = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert torch.equal(final, tokens) and torch.equal(model.forward_head(final), logits)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 48, 6, 8), (2, 64, 3, 4)]
    assert torch.equal(only[0], maps[1]) and torch.equal(only[1], maps[3])
    # stage-4 map = stage-4 tokens without the class token
    tokens4, _ = model.stages[3].forward_tokens(maps[2])
    assert torch.allclose(maps[3].flatten(2).transpose(1, 2), tokens4[:, 1:])


def test_every_stage_maps_nchw_to_nchw():
    model = small_model()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        for stage, inp, expected in zip(model.stages, [x] + maps[:-1], maps):
            assert torch.equal(stage(inp), expected)


@pytest.mark.parametrize("indices", [[0, 1, 2], [1], 2, [3]])
def test_pruned_model_keeps_its_metadata_true(indices):
    """After prune_intermediate_layers the model still computes and describes the stages it keeps:
    its output is the last kept stage's map of every image, num_features is that stage's width,
    and reset_classifier builds a head that fits it."""
    full = small_model()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = full.forward_intermediates(x, intermediates_only=True)
    model = copy.deepcopy(full)
    take = model.prune_intermediate_layers(indices)
    last = max(take)
    assert len(model.stages) == len(model.feature_info) == last + 1
    assert model.num_features == model.head_hidden_size == model.embed_dims[-1] == [16, 32, 48, 64][last]
    with torch.no_grad():
        out = model(x)
        kept = model.forward_intermediates(x, indices=take, intermediates_only=True)
    if last < 3:  # the map of the last kept stage, batch first
        assert torch.equal(out, expected[last])
    else:  # stage 4 kept, head pruned (timm: global_pool ''): every normed token
        assert out.shape == (2, 1 + 3 * 4, 64)
    for got, i in zip(kept, take):
        assert torch.equal(got, expected[i])
    model.reset_classifier(5) if last < 3 else model.reset_classifier(5, "token")
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    if last < 3:
        assert model.global_pool == "avg"
        with pytest.raises(ValueError, match="class token"):
            model.reset_classifier(5, "token")


def test_features_only():
    model = timm.create_model("soft_norm_tiny", features_only=True, embed_dims=(16, 32, 48, 64),
                              num_heads=(1, 2, 3, 4), out_indices=(1, 2, 3))
    assert model.feature_info.channels() == [32, 48, 64]
    assert model.feature_info.reduction() == [8, 16, 32]
    feats = model.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 12), (1, 48, 4, 6), (1, 64, 2, 3)]


@pytest.mark.parametrize("hw", [(229, 311), (799, 1201), (32, 32), (33, 47), (16, 16), (1, 1)])
@pytest.mark.parametrize("normalized", [False, True])
def test_any_input_size(hw, normalized):
    # few Newton steps: at 799x1201 stage 1 has 925 landmarks, and only shapes are checked here
    model = small_model(normalized, embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1), newton_max_iter=3)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    h, w = hw
    for i, fmap in enumerate(maps):
        for _ in range(2 if i == 0 else 1):
            h, w = (h + 1) // 2, (w + 1) // 2  # each stride-2 conv rounds up
        assert fmap.shape[-2:] == (h, w)
        assert torch.isfinite(fmap).all()
    assert logits.shape == (1, 7) and torch.isfinite(logits).all()


def test_small_grid_landmark_rule():
    # A grid side shorter than the landmark stride is stretched to it: one landmark per short side.
    model = small_model(embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 1))
    attn = model.stages[0].blocks[0].attn
    q = torch.randn(1, 1, 4 * 20, 8)
    assert attn.landmarks(q, (4, 20)).shape == (1, 1, 1 * 2, 8)  # floor(8/8) x floor(20/8)
    q = torch.randn(1, 1, 17 * 9, 8)
    assert attn.landmarks(q, (17, 9)).shape == (1, 1, 2 * 1, 8)  # the release's floor rule above s


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 64, 64), "4-D"),
    (torch.randn(1, 1, 64, 64), "input channels"),
    (torch.randn(0, 3, 64, 64), "empty batch"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
])
def test_bad_input_is_a_clear_value_error(bad, match):
    model = small_model()
    with pytest.raises(ValueError, match=match):
        model(bad)
    with pytest.raises(ValueError, match=match):
        model.forward_intermediates(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(embed_dims=(16, 32, 48)), "embed_dims needs 4"),
    (dict(num_heads=(3, 2, 3, 4)), "not divisible"),
    (dict(sr_ratios=(8, 4, 2, 2)), "sr_ratios\\[3\\] must be 1"),
    (dict(newton_numerics="exact"), "newton_numerics"),
    (dict(kernel_method="cuda"), "kernel_method"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


@pytest.mark.parametrize("kernel_method", ["torch", "auto"])
@pytest.mark.parametrize("normalized", [False, True])
def test_batch_independence(normalized, kernel_method):
    model = small_model(normalized, kernel_method=kernel_method)
    x = torch.randn(3, 3, 96, 96) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    with torch.no_grad():
        batch = model.forward_intermediates(x)
        for i in range(3):
            alone = model.forward_intermediates(x[i:i + 1])
            assert rel_err(batch[0][i:i + 1], alone[0]) < 1e-5
            for got, ref in zip(batch[1], alone[1]):
                assert rel_err(got[i:i + 1], ref) < 1e-5


@pytest.mark.parametrize("name", ["soft_tiny", "soft_norm_tiny"])
def test_bf16_autocast_close_to_float32(name):
    model = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(low, ref):
        assert torch.isfinite(a).all()
        assert rel_err(a, b) < 0.1, rel_err(a, b)
        # most of the signal survives: cosine similarity per map
        assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.flatten(), dim=0) > 0.99


def test_residual_drops():
    x = torch.ones(256, 5, 3)
    drop_path = residual_drop("drop_path", 0.25).train()
    out = drop_path(x)
    # whole samples dropped, the kept ones scaled by 1 / keep
    per_sample = out.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()
    kept = per_sample[:, 0] != 0
    assert 0 < kept.sum() < 256
    assert torch.allclose(per_sample[kept], torch.tensor(4 / 3))
    assert torch.equal(drop_path.eval()(x), x)
    assert isinstance(residual_drop("dropout", 0.25), torch.nn.Dropout)
    assert isinstance(residual_drop("drop_path", 0.0), torch.nn.Identity)
    with pytest.raises(ValueError, match="soft_block_drop"):
        residual_drop("stochastic", 0.1)


def test_training_step_backward_and_grad_checkpointing():
    model = small_model(True, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None]
    # activation checkpointing gives the same gradients
    model.eval()
    model.zero_grad()
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], rtol=1e-4, atol=1e-6), n


def test_norm_release_init_quirk():
    plain = timm.create_model("soft_tiny")
    norm = timm.create_model("soft_norm_tiny")
    # trunc_normal(.02) weights and zero biases, except the Norm model's SOFT blocks
    assert plain.stages[0].blocks[0].attn.q.bias.abs().max() == 0
    assert norm.stages[0].blocks[0].attn.q.bias.abs().max() > 0
    assert norm.stages[3].blocks[0].attn.q.bias.abs().max() == 0
    assert abs(plain.stages[0].blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002
