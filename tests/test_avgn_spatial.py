"""AVGN's spatial glance (models/avgn_spatial.py): Eq. 4's bottleneck averaging, Eq. 6's bilinear crop and its
gradient, f_L's GFLOPs on P x P, the early exit, and a patch network that learns where the class is."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from models.avgn import AVGNOutput, SequenceClassifier
from models.avgn_spatial import (AESPA, SPATIAL_VARIANTS, AVGNSpatialSelector, LocalEncoder, SpatialAVGN,
                                 centre_bounds, crop_patches, spatial_losses)
from models.selection import UnitCosts, counted_gflops

COSTS = UnitCosts(image=0.5, audio=0.25, fusion=0.01, clip=10.0)


# --- Eq. 4 -----------------------------------------------------------------------------------------------------------

def test_aespa_averages_the_bottleneck_tokens_of_both_stacks_after_every_layer():
    torch.manual_seed(0)
    aespa = AESPA(dim=8, layers=2, heads=2, n_bottleneck=3, map_size=2).eval()
    z_g, z_a = torch.randn(2, 4, 8), torch.randn(1, 5, 8)           # 2 frames' 2x2 maps, 5 audio steps (shared)
    got = aespa(z_g, z_a)
    assert got.shape == (2, 2, 2, 8)
    with torch.no_grad():
        b = aespa.bottleneck.expand(2, 3, 8)
        za, zg = z_a.expand(2, 5, 8), z_g
        for layer in range(2):
            out_a = aespa.tf_a[layer](torch.cat([za, b], 1))
            out_g = aespa.tf_g[layer](torch.cat([zg, b], 1))
            za, zg = out_a[:, :5], out_g[:, :4]
            b = 0.5 * out_a[:, 5:] + 0.5 * out_g[:, 4:]
    torch.testing.assert_close(got, zg.reshape(2, 2, 2, 8))
    # the visual stack hears the audio only through the averaged bottleneck: not after one layer, after two
    other = z_a + 1.0
    one = AESPA(dim=8, layers=1, heads=2, n_bottleneck=3, map_size=2).eval()
    torch.testing.assert_close(one(z_g, other), one(z_g, z_a))
    assert not torch.allclose(aespa(z_g, other), got)


# --- Eq. 6 -----------------------------------------------------------------------------------------------------------

def _ramp() -> torch.Tensor:
    """A 6x6 one-channel frame with value x + 10 y at pixel (row y, column x)."""
    y, x = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    return (x + 10 * y)[None, None].double()


def test_crop_on_the_pixel_grid_copies_pixels_and_a_half_pixel_centre_averages_neighbours():
    frame = _ramp()
    # centre (3, 3) px: the 2x2 patch covers pixels 2..3 in x and y exactly
    on_grid = crop_patches(frame, torch.tensor([[3 / 6, 3 / 6]]).double(), 2)
    torch.testing.assert_close(on_grid[0, 0], frame[0, 0, 2:4, 2:4])
    # centre (3.5, 2.5) px: samples at x = 2.5, 3.5 and y = 1.5, 2.5 -> each the mean of four pixels
    rand = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)).double()
    got = crop_patches(rand, torch.tensor([[3.5 / 6, 2.5 / 6]]).double(), 2)[0, 0]
    f = rand[0, 0]
    want = torch.tensor([[(f[1, 2] + f[1, 3] + f[2, 2] + f[2, 3]) / 4, (f[1, 3] + f[1, 4] + f[2, 3] + f[2, 4]) / 4],
                         [(f[2, 2] + f[2, 3] + f[3, 2] + f[3, 3]) / 4, (f[2, 3] + f[2, 4] + f[3, 3] + f[3, 4]) / 4]],
                        dtype=torch.double)
    torch.testing.assert_close(got, want)
    # on the ramp: x + 10 y at those points
    ramp = crop_patches(frame, torch.tensor([[3.5 / 6, 2.5 / 6]]).double(), 2)[0, 0]
    torch.testing.assert_close(ramp, torch.tensor([[2.5 + 15, 3.5 + 15], [2.5 + 25, 3.5 + 25]], dtype=torch.double))


def test_a_centre_near_the_edge_is_clamped_so_the_patch_stays_inside():
    frame = _ramp()
    corner = crop_patches(frame, torch.tensor([[0.0, 1.0]]).double(), 2)
    torch.testing.assert_close(corner[0, 0], frame[0, 0, 4:6, 0:2])      # bottom-left 2x2 block
    lo, hi = centre_bounds(2, 6, 6)
    torch.testing.assert_close(lo, torch.tensor([1 / 6, 1 / 6]))
    torch.testing.assert_close(hi, torch.tensor([5 / 6, 5 / 6]))
    with pytest.raises(ValueError, match="does not fit"):
        crop_patches(frame, torch.tensor([[0.5, 0.5]]).double(), 7)


def test_the_crop_passes_a_gradient_to_the_centre_that_matches_a_finite_difference():
    frame = _ramp()
    centre = torch.tensor([[3.5 / 6, 2.5 / 6]], dtype=torch.double, requires_grad=True)
    crop_patches(frame, centre, 2).sum().backward()
    # every sample moves 6 px per unit of x (slope 1 per px) and 6 px per unit of y (slope 10 per px); 4 samples
    torch.testing.assert_close(centre.grad, torch.tensor([[4 * 6.0, 4 * 60.0]], dtype=torch.double))
    rand = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1)).double()
    weights = torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(2)).double()
    c = torch.tensor([[0.53, 0.41]], dtype=torch.double, requires_grad=True)
    (crop_patches(rand, c, 2) * weights).sum().backward()
    eps = 1e-6
    for axis in range(2):
        step = torch.zeros(1, 2, dtype=torch.double)
        step[0, axis] = eps
        with torch.no_grad():
            fd = ((crop_patches(rand, c + step, 2) * weights).sum()
                  - (crop_patches(rand, c - step, 2) * weights).sum()) / (2 * eps)
        assert c.grad[0, axis] != 0
        torch.testing.assert_close(c.grad[0, axis], fd, rtol=1e-5, atol=1e-8)


# --- Eq. 7's cost ----------------------------------------------------------------------------------------------------

def test_local_encoder_gflops_are_its_convolutions_on_the_patch_whatever_the_frame_size():
    f_l = LocalEncoder(widths=(4, 8, 16), depth=1)
    p = 16
    # 3x3 stride-2 convs: 16 -> 8 -> 4 -> 2 px; MACs = out_h * out_w * c_out * c_in * 9
    macs = 8 * 8 * 4 * 3 * 9 + 4 * 4 * 8 * 4 * 9 + 2 * 2 * 16 * 8 * 9
    assert counted_gflops(f_l, torch.zeros(1, 3, p, p)) == pytest.approx(2 * macs / 1e9)
    model = SpatialAVGN(3, spatial="centre", image_dim=4, audio_dim=4, map_dim=4, map_size=2, patch=p, dim=4,
                        heads=1, local_widths=(4, 8, 16)).eval()
    centres = torch.full((1, 1, 2), 0.5)
    for side in (32, 112):
        frames = torch.zeros(1, 1, side, side, 3, dtype=torch.uint8)
        assert counted_gflops(model.local_features, frames, centres) == pytest.approx(2 * macs / 1e9)


# --- early exit ------------------------------------------------------------------------------------------------------

def _video(n: int, image: np.ndarray, frame: int = 8, map_size: int = 2, dim: int = 4, video_id: str = "v"):
    rng = np.random.default_rng(0)
    return SimpleNamespace(arrays={"t": np.arange(n, dtype=np.float32), "image": image.astype(np.float16),
                                   "audio": rng.normal(size=(n, dim)).astype(np.float16),
                                   "image_map": rng.normal(size=(n, map_size, map_size, dim)).astype(np.float16),
                                   "frames": rng.integers(0, 255, (n, frame, frame, 3), dtype=np.uint8)},
                           attrs={"video_id": video_id})


def _set_logits_model(saliency: list[float]) -> SpatialAVGN:
    """A 2-class model whose running logits are the running max of relu(e^G[:2]) and whose saliency is given."""
    model = SpatialAVGN(2, spatial="centre", image_dim=4, audio_dim=4, map_dim=4, map_size=2, patch=4, dim=4,
                        heads=1, local_widths=(4,)).eval()
    with torch.no_grad():
        model.temporal.proj_v.weight.copy_(torch.eye(4))
        model.temporal.proj_v.bias.zero_()
        head = SequenceClassifier(2 * 4 + 4, 2, hidden=2)
        head.step[0].weight.zero_()
        head.step[0].weight[0, 0] = head.step[0].weight[1, 1] = 1.0     # h = relu(q[:2]), q = e^G
        head.step[0].bias.zero_()
        head.out.weight.copy_(torch.eye(2))
        head.out.bias.zero_()
    model.f_av = head
    s = torch.tensor([saliency])
    model.temporal.glance = lambda e_g, e_a, visible: AVGNOutput(s, torch.logit(s), None, None)
    return model


def test_early_exit_stops_at_the_first_confident_step_and_counts_only_what_ran():
    # t = 4 sampled steps of a 4-step video, in glance order: steps 0, 2, 1, 3; saliency order: 2, 1, 3, 0
    model = _set_logits_model([0.1, 0.9, 0.5, 0.3])
    image = np.zeros((4, 4))
    image[2, :2] = [1, 1]         # running logits (1, 1): p = 0.5
    image[1, :2] = [4, 0]         # (4, 1): p = 0.953
    image[3, :2] = [0, 9]         # (4, 9): p = 0.993
    video = _video(4, image)
    full = AVGNSpatialSelector("x", model, COSTS, k=4, t_g=4, t=4).select(video)
    assert full.steps.tolist() == [2, 1, 3, 0]
    at_90 = AVGNSpatialSelector("x", model, COSTS, k=4, t_g=4, t=4, exit_threshold=0.9)
    got = at_90.select(video)
    assert got.steps.tolist() == [2, 1]
    np.testing.assert_allclose(got.scores, torch.softmax(torch.tensor([4.0, 1.0]), 0).numpy(), rtol=1e-5)
    assert got.gflops == pytest.approx(full.gflops - 2 * at_90.step_gflops(4))
    assert at_90.step_gflops(4) > 0
    assert AVGNSpatialSelector("x", model, COSTS, k=4, t_g=4, t=4, exit_threshold=0.99).select(video).steps.tolist() \
        == [2, 1, 3]
    # never confident enough: the same answer as without the gate
    never = AVGNSpatialSelector("x", model, COSTS, k=4, t_g=4, t=4, exit_threshold=1.01).select(video)
    assert never.steps.tolist() == full.steps.tolist() and never.gflops == pytest.approx(full.gflops)
    np.testing.assert_allclose(never.scores, full.scores)


def test_exit_before_a_step_beyond_the_glances_saves_its_image_feature():
    model = _set_logits_model([0.1, 0.9, 0.5, 0.3])      # glance positions 0, 1 visible: steps 0 and 2
    image = np.zeros((4, 4))
    image[2, :2] = [9, 0]                                 # the first processed step is already confident
    video = _video(4, image)
    full = AVGNSpatialSelector("x", model, COSTS, k=4, t_g=2, t=4).select(video)
    early = AVGNSpatialSelector("x", model, COSTS, k=4, t_g=2, t=4, exit_threshold=0.9)
    got = early.select(video)
    assert got.steps.tolist() == [2]
    # steps 1 and 3 (glance positions 2, 3) were never processed: two image features fewer, three steps fewer
    assert got.gflops == pytest.approx(full.gflops - 2 * COSTS.image - 3 * early.step_gflops(4))


# --- the selector's report and the variants --------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", SPATIAL_VARIANTS)
def test_selector_reports_the_patches_it_cropped(spatial):
    torch.manual_seed(0)
    model = SpatialAVGN(3, spatial=spatial, image_dim=4, audio_dim=4, map_dim=4, map_size=2, patch=4, dim=4, heads=1,
                        aespa_dim=4, local_widths=(4,))
    with torch.no_grad():
        if spatial in ("aespa", "pi"):
            model.policy.fc.weight.normal_()                   # not the untrained policy's centre
    video = _video(12, np.random.default_rng(1).normal(size=(12, 4)), frame=12)
    sel = AVGNSpatialSelector("x", model, COSTS, k=3, t_g=2, t=8)
    got = sel.select(video)
    patches = got.details["patches"]
    assert patches["steps"].tolist() == got.steps.tolist() and len(got.steps) == 3
    assert patches["size"] == pytest.approx(4 / 12)
    assert patches["centres"].shape == (3, 2)
    assert (patches["centres"] >= 2 / 12 - 1e-6).all() and (patches["centres"] <= 10 / 12 + 1e-6).all()
    if spatial == "centre":
        assert (patches["centres"] == 0.5).all()
    else:
        assert not np.allclose(patches["centres"], 0.5)
    again = sel.select(video)
    np.testing.assert_array_equal(again.details["patches"]["centres"], patches["centres"])
    if spatial == "random":
        other = sel.select(_video(12, np.random.default_rng(1).normal(size=(12, 4)), frame=12, video_id="w"))
        assert not np.allclose(other.details["patches"]["centres"], patches["centres"])
    local = AVGNSpatialSelector("x", model, COSTS, k=3, t_g=2, t=8, head="local").select(video)
    assert local.steps.tolist() == got.steps.tolist() and local.scores.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("spatial", SPATIAL_VARIANTS)
def test_spatial_losses_reach_every_trained_part(spatial):
    torch.manual_seed(0)
    model = SpatialAVGN(3, spatial=spatial, image_dim=4, audio_dim=4, map_dim=4, map_size=2, patch=4, dim=4, heads=1,
                        aespa_dim=4, local_widths=(4,))
    if spatial in ("aespa", "pi"):
        with torch.no_grad():
            model.policy.fc.weight.normal_()
    b, t = 3, 6
    frames = torch.randint(0, 255, (b, t, 10, 10, 3), dtype=torch.uint8)
    losses = spatial_losses(model, torch.randn(b, t, 4), torch.randn(b, t, 4), torch.randn(b, t, 2, 2, 4), frames,
                            torch.tensor([0, 1, 2]), t_g=2, k=3, random_patches=spatial == "centre")
    assert set(losses) == {"p", "v", "a", "s", "mask", "ord"} | ({"l_rand"} if spatial == "centre" else set())
    sum(losses.values()).backward()
    parts = [model.f_l, model.fc_l, model.f_v, model.f_av]
    if spatial in ("aespa", "pi"):
        parts.append(model.policy)
    if spatial == "aespa":
        parts.append(model.aespa)
    for part in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


# --- a patch network learns where the class is -----------------------------------------------------------------------

def _corner_frames(n: int, corner: tuple[int, int], gen: torch.Generator, side: int = 32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey frames whose class shows only as a colour glow (red: 0, blue: 1) fading from one corner."""
    y = torch.randint(0, 2, (n,), generator=gen)
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    glow = 200 * torch.exp(-((yy - corner[1] * side) ** 2 + (xx - corner[0] * side) ** 2).sqrt() / 4)
    colour = torch.tensor([[1.0, 0, -1], [-1, 0, 1]])[y]
    frames = 120 + 120 * torch.randn(n, side, side, 3, generator=gen) + glow[None, :, :, None] * colour[:, None, None]
    return frames.clamp(0, 255).to(torch.uint8), y


@pytest.mark.parametrize("corner", [(0, 0), (1, 1)])
def test_a_patch_network_learns_to_look_at_the_corner_that_holds_the_class(corner):
    """pi + f_L trained by FC^L's loss on pi's patch plus a random patch (AdaFocusV2's recipe) on 32 px frames with a
    17 px patch: pi starts at the centre (its output layer is zero) and must end in the class's quadrant."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # tiny convolutions: threads only contend
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = SpatialAVGN(2, spatial="pi", image_dim=4, audio_dim=4, map_dim=3, map_size=2, patch=17, dim=4,
                            heads=1, aespa_dim=8, policy_hidden=8, local_widths=(8, 16))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        lo, hi = centre_bounds(17, 32, 32)

        def maps_of(frames: torch.Tensor) -> torch.Tensor:      # a 2x2 colour map stands in for the stored e^G map
            x = frames.float().div(255).permute(0, 3, 1, 2)
            return nn.functional.adaptive_avg_pool2d(x, 2).permute(0, 2, 3, 1)[:, None]

        for _ in range(150):
            frames, y = _corner_frames(32, corner, gen)
            centres, _ = model.glance_centres(maps_of(frames), torch.zeros(32, 1, 4), (32, 32))
            chance = lo + (hi - lo) * torch.rand(32, 1, 2, generator=gen)
            loss = sum(nn.functional.cross_entropy(model.fc_l(model.local_features(frames[:, None], c)[:, 0]), y)
                       for c in (centres, chance))
            opt.zero_grad()
            loss.backward()
            opt.step()
        frames, _ = _corner_frames(64, corner, torch.Generator().manual_seed(99))
        with torch.no_grad():
            centres, _ = model.eval().glance_centres(maps_of(frames), torch.zeros(64, 1, 4), (32, 32))
    finally:
        torch.set_num_threads(threads)
    side = torch.tensor(corner) * 2.0 - 1                # -1: the left / top half, 1: the right / bottom half
    assert ((centres[:, 0] - 0.5) * side > 0).all()      # the class's quadrant, never the middle
