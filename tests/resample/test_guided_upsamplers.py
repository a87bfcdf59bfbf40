"""FADE, SAPA, FreqFusion, IndexNet and A2U against their formulas (spec newer-upsamplers §1–3, §5), computed here.

The expected values use explicit per-pixel loops for every reassembly (not the CARAFE op) and
plain functional calls for the convolutions, with the module's own weights; float64 gradcheck;
zero padding at borders; the guided contract's refusals; DySample variants' parameter counts (§4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carafe_exp.errors import ConfigError
from carafe_exp.resample import build_upsampler
from carafe_exp.resample.freqfusion_sampler import local_cosine_similarity
from carafe_exp.resample.sapa_similarity import neighbour_similarity

pytestmark = pytest.mark.usefixtures("_float64")


@pytest.fixture
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)




def reassemble_loops(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """out[n,c,y,x] = Σ_{dy,dx} K[n,dy·k+dx,y,x]·X[n,c,y//s+dy−r,x//s+dx−r], zero outside (spec §0)."""
    n, c, h, w = x.shape
    r = k // 2
    out = torch.zeros(n, c, kernels.shape[-2], kernels.shape[-1], dtype=x.dtype)
    for y in range(kernels.shape[-2]):
        for xx in range(kernels.shape[-1]):
            for dy in range(k):
                for dx in range(k):
                    sy, sx = y // s + dy - r, xx // s + dx - r
                    if 0 <= sy < h and 0 <= sx < w:
                        out[:, :, y, xx] += kernels[:, dy * k + dx, y, xx, None] * x[:, :, sy, sx]
    return out


def up2(t: torch.Tensor) -> torch.Tensor:
    return t.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def guided(name: str, channels: int, **params) -> torch.nn.Module:
    return build_upsampler(name, channels, 2, guide_available=True, **params).double()


def randomize(module: torch.nn.Module) -> None:
    """Weights far from their near-zero initialisation, so kernels are far from uniform."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)


# ---- FADE (spec §1) ----

def fade_expected(m, x, g):
    e = F.conv2d(g, m.guide_compressor.weight, m.guide_compressor.bias)
    d = F.conv2d(x, m.compressor.weight)
    enc_w, enc_b = m.content_encoder.weight, m.content_encoder.bias
    logits = F.conv2d(e, enc_w, enc_b, padding=1) + up2(F.conv2d(d, enc_w, enc_b, padding=1))
    out = reassemble_loops(x, F.softmax(logits, dim=1), 5, 2)
    if m.gate is None:
        return out
    gate = up2(torch.sigmoid(F.conv2d(x, m.gate.weight, m.gate.bias)))
    return gate * g + (1 - gate) * out


@pytest.mark.parametrize("params", [{}, {"gating": True}, {"form": "eccv"}])
def test_fade_matches_its_formula_on_a_non_square_map(params: dict) -> None:
    m = guided("fade", 3, **params)
    randomize(m)
    x, g = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 6, 8)
    torch.testing.assert_close(m(x, guide=g), fade_expected(m, x, g))


def test_fade_eccv_semi_shift_is_the_high_res_conv() -> None:
    """The ECCV form's four shifted stride-2 convs, rearranged as the einops copy of FADE_H2L.py does."""
    m = guided("fade", 4, form="eccv")
    randomize(m)
    e = torch.randn(1, 64, 6, 10)
    w, b = m.content_encoder.weight, m.content_encoder.bias
    subs = [F.conv2d(F.pad(e, p), w, b, stride=2) for p in ([1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 1])]
    stacked = torch.stack(subs, dim=1).view(1, 2, 2, 25, 3, 5)  # (n, a, b, k², h, w)
    semi_shift = stacked.permute(0, 3, 4, 1, 5, 2).reshape(1, 25, 6, 10)  # 'n (a b) c h w -> n c (h a) (w b)'
    torch.testing.assert_close(m._guide_logits(e), semi_shift)
    torch.testing.assert_close(semi_shift, F.conv2d(e, w, b, padding=1))


# ---- SAPA (spec §2) ----

def sapa_expected(m, x, g):
    def ln_linear(norm, linear, t):
        t = t.permute(0, 2, 3, 1)
        if norm is not None:
            t = F.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return F.linear(t, linear.weight, linear.bias).permute(0, 3, 1, 2)

    q = ln_linear(m.norm_guide, m.q, g)
    if m.variant == "g":
        gate = up2(torch.sigmoid(ln_linear(m.norm_x, m.gate, x)))
        q = gate * q + (1 - gate) * ln_linear(None, m.q_x, up2(x))
    key = ln_linear(m.norm_x, m.k, x)
    n, c, h, w = x.shape
    out = torch.zeros(n, c, 2 * h, 2 * w)
    for y in range(2 * h):
        for xx in range(2 * w):
            logits, values = [], []
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    sy, sx = y // 2 + dy, xx // 2 + dx
                    inside = 0 <= sy < h and 0 <= sx < w
                    # Out-of-range neighbour: logit 0, value 0 (the official op).
                    logits.append((q[:, :, y, xx] * key[:, :, sy, sx]).sum(1) if inside else torch.zeros(n))
                    values.append(x[:, :, sy, sx] if inside else torch.zeros(n, c))
            weights = torch.softmax(torch.stack(logits, 1), dim=1)
            out[:, :, y, xx] = (weights[:, :, None] * torch.stack(values, 1)).sum(1)
    return out


@pytest.mark.parametrize("variant", ["b", "g"])
def test_sapa_matches_its_formula(variant: str) -> None:
    m = guided("sapa", 3, variant=variant, embedding_dim=4, guide_channels=5)
    randomize(m)
    x, g = torch.randn(2, 3, 3, 4), torch.randn(2, 5, 6, 8)
    torch.testing.assert_close(m(x, guide=g), sapa_expected(m, x, g))


def test_sapa_similarity_equals_the_unfolded_keys_and_has_exact_gradients() -> None:
    q, key = torch.randn(1, 3, 6, 4, requires_grad=True), torch.randn(1, 3, 3, 2, requires_grad=True)
    unfolded = F.unfold(key, 3, padding=1).view(1, 3, 9, 3, 2)  # the portable form of spec §2
    expected = (q[:, :, None] * up2(unfolded)).sum(1)
    torch.testing.assert_close(neighbour_similarity(q, key, 3, 2), expected)
    assert torch.autograd.gradcheck(lambda a, b: neighbour_similarity(a, b, 3, 2), (q, key))
    assert torch.autograd.gradcheck(lambda a, b: neighbour_similarity(a, b, 1, 3),
                                    (torch.randn(1, 2, 6, 3, requires_grad=True),
                                     torch.randn(1, 2, 2, 1, requires_grad=True)))


# ---- FreqFusion (spec §3) ----

def freqfusion_expected(m, x, g):
    def normalize(logits, k):
        window = torch.from_numpy(np.outer(np.hamming(k), np.hamming(k)).reshape(-1)).view(1, -1, 1, 1)
        weights = torch.softmax(logits, dim=1) * window
        return weights / weights.sum(1, keepdim=True)

    lp, hp = m.lowpass_encoder, m.highpass_encoder
    chr_ = F.conv2d(g, m.guide_compressor.weight, m.guide_compressor.bias)
    clr = F.conv2d(x, m.compressor.weight, m.compressor.bias)
    a0 = F.conv2d(chr_, hp.weight, hp.bias, padding=1)
    chr_ = 2 * chr_ - reassemble_loops(chr_, normalize(a0, 3), 3, 1)
    l_hr = F.conv2d(chr_, lp.weight, lp.bias, padding=1)
    l_all = l_hr + reassemble_loops(F.conv2d(clr, lp.weight, lp.bias, padding=1), normalize(l_hr, 5), 5, 2)
    k_lp = normalize(l_all, 5)
    a_all = a0 + reassemble_loops(F.conv2d(clr, hp.weight, hp.bias, padding=1), k_lp, 5, 2)
    k_hp = normalize(a_all, 3)
    lr_up = reassemble_loops(x, k_lp, 5, 2)
    hr_out = 2 * g - reassemble_loops(g, k_hp, 3, 1)
    if m.sampler is not None:
        lr_up = official_feature_resample(m.sampler, chr_, clr, lr_up)
    return hr_out + lr_up  # the official FPN step: lateral ← hr_out + lr_up


def official_feature_resample(sampler, chr_, clr, lr_up):
    """LocalSimGuidedSampler as the official code computes it: unfold, cosine_similarity, init_pos, grid_sample."""
    def with_similarity(norm, t):
        t = F.group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps)
        n, c, h, w = t.shape
        unfolded = F.unfold(t, 3, padding=2, dilation=2).reshape(n, c, 9, h, w)
        similarity = F.cosine_similarity(unfolded[:, :, 4:5], unfolded, dim=1)
        return torch.cat([t, similarity[:, :4], similarity[:, 5:]], dim=1)

    def conv(module, t):
        return F.conv2d(t, module.weight, module.bias, padding=1)

    groups = sampler.groups
    hr_x, lr_x = with_similarity(sampler.norm_guide, chr_), with_similarity(sampler.norm_input, clr)
    h = torch.arange(-0.5, 1.5) / 2  # the official _init_pos at scale 2
    init_pos = torch.stack(torch.meshgrid([h, h], indexing="ij")).transpose(1, 2)
    init_pos = init_pos.repeat(1, groups, 1).reshape(1, -1, 1, 1)
    offset = ((conv(sampler.offset, lr_x) + F.pixel_unshuffle(conv(sampler.guide_offset, hr_x), 2))
              * torch.sigmoid(conv(sampler.scope, lr_x) + F.pixel_unshuffle(conv(sampler.guide_scope, hr_x), 2))
              + init_pos)
    n, _, height, width = offset.shape
    offset = offset.view(n, 2, -1, height, width)
    coords_h, coords_w = torch.arange(height) + 0.5, torch.arange(width) + 0.5
    coords = torch.stack(torch.meshgrid([coords_w, coords_h], indexing="ij")).transpose(1, 2).unsqueeze(1).unsqueeze(0)
    coords = 2 * (coords + offset) / torch.tensor([width, height]).view(1, 2, 1, 1, 1) - 1
    coords = F.pixel_shuffle(coords.view(n, -1, height, width), 2).view(n, 2, -1, 2 * height, 2 * width)
    coords = coords.permute(0, 2, 3, 4, 1).flatten(0, 1)
    sampled = F.grid_sample(lr_up.reshape(n * groups, -1, 2 * height, 2 * width), coords, mode="bilinear",
                            align_corners=False, padding_mode="border")
    return sampled.view(n, -1, 2 * height, 2 * width)


@pytest.mark.parametrize("params", [{"c_m": 4, "feature_resample": False}, {"c_m": 8}])
def test_freqfusion_step_adds_up_to_the_official_fusion(params: dict) -> None:
    m = guided("freqfusion", 4, **params)
    randomize(m)
    x, g = torch.randn(2, 4, 3, 4), torch.randn(2, 4, 6, 8)
    # The FPN computes lateral + up(x, guide=lateral); that sum is FreqFusion's hr_out + lr_up.
    torch.testing.assert_close(g + m(x, guide=g), freqfusion_expected(m, x, g))


def test_freqfusion_offset_resampler_starts_near_identity_and_moves_lr_up() -> None:
    """Zero direction convs: lr_up itself; the official default (Xavier-uniform everywhere) moves it."""
    m = guided("freqfusion", 4, c_m=8)
    x, g = torch.randn(1, 4, 3, 4), torch.randn(1, 4, 6, 8)
    without = guided("freqfusion", 4, c_m=8, feature_resample=False)
    without.load_state_dict(m.state_dict(), strict=False)
    assert not torch.allclose(m(x, guide=g), without(x, guide=g))
    with torch.no_grad():
        for conv in (m.sampler.offset, m.sampler.guide_offset):
            conv.weight.zero_()
            conv.bias.zero_()
    torch.testing.assert_close(m(x, guide=g), without(x, guide=g))


def test_local_cosine_similarity_equals_the_unfolded_form_and_is_zero_outside() -> None:
    t = torch.randn(2, 5, 6, 7)
    unfolded = F.unfold(t, 3, padding=2, dilation=2).reshape(2, 5, 9, 6, 7)
    expected = F.cosine_similarity(unfolded[:, :, 4:5], unfolded, dim=1)
    ours = local_cosine_similarity(t)
    torch.testing.assert_close(ours, torch.cat([expected[:, :4], expected[:, 5:]], dim=1))
    assert (ours[:, 0, :2, :] == 0).all() and (ours[:, 7, :, -2:] == 0).all()  # neighbours beyond the border


# ---- IndexNet and A2U (spec §5; the comparison ports' IndexUp and A2UUp) ----

def sub_pixel_layout(per_position: list[torch.Tensor]) -> torch.Tensor:
    """(N, C, H, W) maps for sub-pixels (0,0), (0,1), (1,0), (1,1) → one (N, C, 2H, 2W) map."""
    n, c, h, w = per_position[0].shape
    out = torch.empty(n, c, 2 * h, 2 * w)
    for position, values in enumerate(per_position):
        out[:, :, position // 2::2, position % 2::2] = values
    return out


def batch_norm_eval(bn: torch.nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((t - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def indexnet_expected(m, x, g, block: str):
    def branch_logits(branch, groups: int, context: bool) -> torch.Tensor:
        stride_conv = branch[0]
        t = F.conv2d(g, stride_conv.weight, stride=2, padding=1 if context else 0, groups=groups)
        if len(branch) == 1:
            return t
        t = torch.clamp(batch_norm_eval(branch[1], t), 0, 6)
        return F.conv2d(t, branch[3].weight, groups=groups)

    if block == "holistic":
        logits = branch_logits(m.branches[0], 1, True)  # (N, 4, H, W): one channel per sub-pixel
        positions = [logits[:, p:p + 1] for p in range(4)]
    else:
        groups, context = (x.shape[1], False) if block == "o2o" else (1, True)
        positions = [branch_logits(branch, groups, context) for branch in m.branches]
    # The port's mask: sigmoid of the decoder indices, which are themselves sigmoid(logits).
    mask = sub_pixel_layout([torch.sigmoid(torch.sigmoid(p)) for p in positions])
    return mask * up2(x)


@pytest.mark.parametrize("block", ["holistic", "o2o", "m2o"])
def test_indexnet_matches_its_formula(block: str) -> None:
    m = guided("indexnet", 3, index_block=block)
    randomize(m)
    for bn in (module for module in m.modules() if isinstance(module, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2)
    m.eval()
    x, g = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 6, 8)
    torch.testing.assert_close(m(x, guide=g), indexnet_expected(m, x, g, block))


def test_indexnet_mask_lies_where_two_sigmoids_put_it() -> None:
    """The port's double sigmoid: every index is in (σ(0), σ(1)) = (0.5, 0.731), never near 0."""
    m = guided("indexnet", 4)
    randomize(m)
    mask = m.mask(torch.randn(2, 4, 8, 8) * 10)
    assert mask.min() > 0.5 and mask.max() < torch.sigmoid(torch.tensor(1.0))


def group_norm_leaky(norm: torch.nn.Sequential, t: torch.Tensor) -> torch.Tensor:
    gn = norm[0]
    n, c, h, w = t.shape
    grouped = t.reshape(n, gn.num_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + gn.eps)).reshape(n, c, h, w)
    normed = normed * gn.weight.view(1, -1, 1, 1) + gn.bias.view(1, -1, 1, 1)
    return torch.where(normed >= 0, normed, 0.01 * normed)


def a2u_expected(m, x, g):
    n, c = g.shape[:2]
    k_up = m.kernel_size
    kernels = []
    for i in range(n):
        image = g[i:i + 1]
        filtered = []
        for pool_conv, norm in ((m.filter_u, m.norm_u), (m.filter_v, m.norm_v)):
            conv = pool_conv[1]
            weights = F.conv2d(F.adaptive_avg_pool2d(image, 6), conv.weight, conv.bias)  # (1, 1, 6, 6): one filter
            channels = [F.conv2d(image[:, j:j + 1], weights, stride=2, padding=2) for j in range(c)]
            filtered.append(group_norm_leaky(norm, torch.cat(channels, dim=1)))
        affinity = (filtered[0] * filtered[1]).sum(1, keepdim=True) / c ** 0.5  # (1, 1, H, W)
        projection = m.dynamic_projection[1]
        p = F.conv2d(image.mean((2, 3), keepdim=True), projection.weight, projection.bias)[0, :, 0, 0]
        # Logit 4t + (2a + b) is kernel entry t at sub-pixel (a, b).
        positions = [torch.stack([p[4 * t + pos] * affinity[0, 0] for t in range(k_up ** 2)])[None]
                     for pos in range(4)]
        kernels.append(torch.softmax(torch.sigmoid(sub_pixel_layout(positions)), dim=1))
    return reassemble_loops(x, torch.cat(kernels), k_up, 2)


def test_a2u_matches_its_formula() -> None:
    m = guided("a2u", 32)
    randomize(m)
    x, g = torch.randn(2, 32, 3, 4), torch.randn(2, 32, 6, 8)
    torch.testing.assert_close(m(x, guide=g), a2u_expected(m, x, g))


def test_a2u_refuses_a_guide_its_group_norm_cannot_split() -> None:
    with pytest.raises(ConfigError, match="upsampler.guide_channels=48 .* multiple of 32"):
        build_upsampler("a2u", 48, 2, guide_available=True)


# ---- shared properties ----

CASES = [("fade", {"c_m": 2}), ("fade", {"gating": True, "c_m": 2}), ("sapa", {"embedding_dim": 2}),
         ("sapa", {"variant": "g", "embedding_dim": 2}), ("freqfusion", {"c_m": 2, "feature_resample": False})]
# IndexNet in eval mode (batch statistics of one tiny map are not what gradcheck tests); A2U needs C % 32 == 0.
GRADIENT_CASES = [(name, params, 2) for name, params in CASES] + [
    ("indexnet", {}, 2), ("indexnet", {"index_block": "o2o"}, 2), ("indexnet", {"index_block": "m2o"}, 2),
    ("a2u", {}, 32), ("freqfusion", {"c_m": 8}, 4)]


@pytest.mark.parametrize(("name", "params", "channels"), GRADIENT_CASES)
def test_float64_gradients(name: str, params: dict, channels: int) -> None:
    m = guided(name, channels, **params).eval()
    randomize(m)
    x = torch.randn(1, channels, 2, 3, requires_grad=True)
    g = torch.randn(1, channels, 4, 6, requires_grad=True)
    # Inputs plus the module's two smallest tensors (every tensor would make gradcheck slow, not stricter).
    weights = sorted(m.parameters(), key=lambda p: p.numel())[:2]
    assert torch.autograd.gradcheck(lambda a, b, *_: m(a, guide=b), (x, g, *weights), fast_mode=True)


@pytest.mark.parametrize(("name", "params"), CASES[:1] + CASES[2:3])
def test_zero_padding_at_the_border(name: str, params: dict) -> None:
    """A constant input stays constant inside but loses the weight of the neighbours beyond the border."""
    m = guided(name, 2, **params)
    x, g = torch.ones(1, 2, 5, 5), torch.randn(1, 2, 10, 10)
    out = m(x, guide=g)
    kernels = m.kernels(x, g).view(1, 5, 5, 10, 10)
    torch.testing.assert_close(out[0, 0, 4:6, 4:6], torch.ones(2, 2))  # centre: all 25 neighbours inside
    inside = kernels[0, 2:, 2:, 0, 0].sum()  # output (0,0): only dy, dx >= 0 exist
    torch.testing.assert_close(out[0, 0, 0, 0], inside)
    assert inside < 0.99


@pytest.mark.parametrize("name", ["fade", "sapa", "freqfusion", "indexnet", "a2u"])
def test_guided_contract_refusals(name: str) -> None:
    m = build_upsampler(name, 32, 2, guide_available=True)
    assert m.requires_guide
    x = torch.randn(1, 32, 4, 4)
    with pytest.raises(ConfigError, match="needs guide="):
        m(x)
    with pytest.raises(ConfigError, match=r"must be \(N, C_guide, 2·H, 2·W\) = \(8, 8\)"):
        m(x, guide=torch.randn(1, 32, 9, 8))
    with pytest.raises(ConfigError, match=f"upsampler.scale=4 is not valid for upsampler={name}"):
        build_upsampler(name, 32, 4, guide_available=True)
    with pytest.raises(ConfigError, match=f"upsampler={name} needs a guide .* the mask head has none"):
        build_upsampler(name, 32, 2, site="the mask head")


def test_dysample_variants_have_the_official_parameter_counts() -> None:
    """Spec §4 at C=256, s=2: lp/g4/static 8,224; lp/g4/dynamic (DySample+) 16,416; pl/g8/dynamic 2,064."""
    def count(name: str, **params) -> int:
        return sum(p.numel() for p in build_upsampler(name, 256, 2, **params).parameters())

    assert count("dysample") == 8_224
    assert count("dysample", dyscope=True) == count("dysample_plus") == 16_416
    assert count("dysample", style="pl", groups=8, dyscope=True) == 2_064


def test_guided_parameter_counts() -> None:
    """FADE at C=256 (spec §1): 16,448 + 16,384 + 14,425 = 47,257, plus 257 for the gate."""
    def count(name: str, **params) -> int:
        return sum(p.numel() for p in build_upsampler(name, 256, 2, guide_available=True, **params).parameters())

    assert count("fade") == count("fade", form="eccv") == 47_257
    assert count("fade", gating=True) == 47_257 + 257
    # SAPA-B: two LayerNorms (2·256 each) and two Linear 256→64 (+bias); FreqFusion: compressors 2·(256·64+64),
    # ALPF encoder 64·25·9+25, AHPF encoder 64·9·9+9.
    assert count("sapa") == 2 * 512 + 2 * (256 * 64 + 64)
    fusion = 2 * (256 * 64 + 64) + 64 * 25 * 9 + 25 + 64 * 9 * 9 + 9
    assert count("freqfusion", feature_resample=False) == fusion
    # The offset resampler: 3×3 convs from c_m + 8 similarity channels to 2·4·4 (offset, scope) and 2·4 (their
    # high-res twins), plus two GroupNorms of c_m.
    assert count("freqfusion") == fusion + 2 * (72 * 9 * 32 + 32) + 2 * (72 * 9 * 8 + 8) + 2 * 2 * 64
    # Spec §5: IndexNet "+6.3M on FPN" (three steps), holistic block conv 4×4 256→512, BN(512), conv 1×1 512→4;
    # A2U "+0.03M on FPN": GroupNorms 2·2·256, dynamic 1×1 256→36 (+bias), filters U, V 256→1 (+bias).
    assert count("indexnet") == 256 * 512 * 16 + 2 * 512 + 512 * 4 == 2_100_224
    assert round(3 * count("indexnet") / 1e6, 1) == 6.3
    assert count("a2u") == 2 * 2 * 256 + 256 * 36 + 36 + 2 * 257 == 10_790
    assert round(3 * count("a2u") / 1e6, 2) == 0.03
