"""Image-space parts of the data engine that need no face model: black border, occluders, the splat's hole
fill, hair blur, exposure, the paper's augmentation, the yaw prior, the photo backgrounds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def test_black_border_zeroes_a_band_on_each_of_the_four_sides():
    from prn_blender.synth.sampler import black_border
    n = 64
    img = torch.rand(400, 3, n, n) * 0.9 + 0.1                     # nowhere zero before
    out = black_border(img, torch.Generator().manual_seed(1), prob=1.0, max_frac=0.35)
    zero = (out == 0).all(1)                                        # (B,n,n)
    sides = {"top": zero[:, 0].all(1), "bottom": zero[:, -1].all(1), "left": zero[:, :, 0].all(1),
             "right": zero[:, :, -1].all(1)}
    banded = torch.stack(list(sides.values())).any(0)
    assert all(int(v.sum()) > 60 for v in sides.values()), {k: int(v.sum()) for k, v in sides.items()}
    # a band touches exactly one side, is at most 35 % deep, and leaves everything else untouched
    assert int(torch.stack(list(sides.values())).sum(0).max()) == 1
    assert int(zero.sum((1, 2)).max()) <= int(0.35 * n) * n
    assert torch.equal(out[~banded], img[~banded]) and torch.equal(out[~zero[:, None].expand_as(out)],
                                                                   img[~zero[:, None].expand_as(img)])


def test_occluders_keep_the_other_samples_and_the_random_stream():
    """Samples without an occluder come back untouched, and the generator advances by the same draws whichever
    samples are occluded (later draws of a seed do not depend on it)."""
    from prn_blender.synth.sampler import occlude
    img = torch.rand(64, 3, 48, 48) * 0.8 + 0.1
    after = {}
    for prob in (0.0, 0.4, 1.0):
        g = torch.Generator().manual_seed(3)
        out = occlude(img, g, prob=prob)
        after[prob] = torch.rand(4, generator=g)
        changed = (out != img).flatten(1).any(1)
        if prob == 0.0:
            assert torch.equal(out, img)
        elif prob == 1.0:
            assert bool(changed.all())
        else:
            assert 10 < int(changed.sum()) < 54, int(changed.sum())
            assert torch.equal(out[~changed], img[~changed])
    assert torch.equal(after[0.0], after[0.4]) and torch.equal(after[0.0], after[1.0])


def _cv2_context_blur(img: np.ndarray, lm: np.ndarray, grow: float) -> tuple[np.ndarray, np.ndarray]:
    """sampler.blur_context's definition with OpenCV on one (n,n,3) image: the integer convex hull of the 68
    landmarks and the raised brow points, grown about the landmarks' mean; cv2.GaussianBlur outside it."""
    import cv2
    lo, hi = lm.min(0), lm.max(0)
    c = lm.mean(0)
    pts = np.concatenate([lm, lm[17:27] - [0, 0.35 * (hi[1] - lo[1])]])
    hull = cv2.convexHull(((pts - c) * grow + c).astype(np.float32)).astype(np.int32)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    k = 2 * int(np.sqrt(np.prod(np.maximum(hi - lo, 1.0))) / 4) + 1
    m = mask[..., None].astype(np.float32)
    return img * m + cv2.GaussianBlur(img, (k, k), 0) * (1 - m), mask.astype(bool)


def test_context_blur_matches_opencv_and_keeps_the_random_stream():
    """blur_context against its OpenCV definition: the mask is the hull (IoU > 0.98; our hull is the intersection
    of 360 supporting half-planes, OpenCV's is rounded to whole pixels), and wherever the two masks agree the
    pixels match OpenCV's blur. Unchosen samples are untouched, and the blur's generator advances by the same
    draws whatever is chosen."""
    from prn_blender.core.context import context_mask
    from prn_blender.synth.sampler import blur_context
    rng = np.random.default_rng(5)
    B, n = 6, 256
    img = torch.from_numpy(rng.random((B, 3, n, n), dtype=np.float32))
    ang = rng.random((B, 68)) * 2 * np.pi
    size = rng.uniform(50, 120, (B, 1))
    lm = np.stack([np.cos(ang), 1.2 * np.sin(ang)], -1) * size[..., None] * np.sqrt(rng.random((B, 68, 1)))
    lm = torch.from_numpy((lm + rng.uniform(100, 156, (B, 1, 2))).astype(np.float32))
    after = {}
    for prob in (0.0, 0.5, 1.0):
        g = torch.Generator().manual_seed(2)
        out = blur_context(img, lm, g, prob=prob)
        after[prob] = torch.rand(3, generator=g)
        changed = (out != img).flatten(1).any(1)
        if prob == 0.0:
            assert torch.equal(out, img)
        elif prob == 0.5:
            assert 0 < int(changed.sum()) < B and torch.equal(out[~changed], img[~changed])
    assert torch.equal(after[0.0], after[0.5]) and torch.equal(after[0.0], after[1.0])
    g = torch.Generator().manual_seed(2)
    torch.rand(B, generator=g)
    grow = torch.rand(B, generator=g) * 0.3 + 1.1                     # the draws blur_context made at prob 1
    ours = context_mask(lm, grow)[:, 0].numpy() > 0.5
    for b in range(B):
        ref, mask = _cv2_context_blur(img[b].permute(1, 2, 0).numpy(), lm[b].numpy(), float(grow[b]))
        assert (ours[b] & mask).sum() / (ours[b] | mask).sum() > 0.98
        agree = ours[b] == mask
        got = out[b].permute(1, 2, 0).numpy()
        assert np.abs(got - ref)[agree].max() < 1e-4
        assert np.abs(got - img[b].permute(1, 2, 0).numpy())[~mask & agree].mean() > 0.05    # it did blur


def test_hole_fill_matches_the_dense_three_pass_definition():
    """The splat's hole fill, which sums only at the pixels it fills, against the definition computed densely:
    three passes, each giving every invalid pixel with 3 or more valid 3x3 neighbours their mean colour and depth;
    invalid = empty (-inf) or more than 6 deeper than the nearest depth within 2 pixels (a leak)."""
    from prn_blender.synth.render import _fill_holes_
    g = torch.Generator().manual_seed(0)
    B, H, W = 3, 40, 50
    zb = torch.rand(B, 1, H, W, generator=g) * 4
    zb[:, :, 10:25, 12:30] += 20                                    # a near surface ...
    leak = (torch.rand(B, 1, H, W, generator=g) < 0.1) & (zb > 20)
    zb[leak] -= 15                                                  # ... with far pixels leaking through
    zb[torch.rand(B, 1, H, W, generator=g) < 0.3] = -torch.inf      # holes
    zb[:, :, :, :8] = -torch.inf                                    # and an empty band the fill grows into
    img = torch.rand(B, 3, H, W, generator=g) * torch.isfinite(zb)

    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)

    def box(x):                                                     # 3x3 sums, zeros outside
        return F.conv2d(x.reshape(-1, 1, H, W), ones, padding=1).view_as(x)

    near = F.max_pool2d(zb, 5, 1, 2)
    valid = torch.isfinite(zb) & (zb > near - 6)
    ref_img, ref_z = img.double(), zb.double()
    for _ in range(3):
        v = valid.double()
        cnt = box(v)
        fill = ~valid & (cnt >= 3)
        ref_img = torch.where(fill, box(ref_img * v) / cnt.clamp_min(1), ref_img)
        ref_z = torch.where(fill, box(torch.where(valid, ref_z, 0.0)) / cnt.clamp_min(1), ref_z)
        valid = valid | fill
    out_img, out_z = img.clone(), zb.clone()
    _fill_holes_(out_img, out_z)
    assert torch.equal(torch.isfinite(out_z), torch.isfinite(ref_z))
    assert int((torch.isfinite(out_z) & ~torch.isfinite(zb)).sum()) > 500     # holes and the band's edge filled
    fin = torch.isfinite(ref_z)
    assert torch.allclose(out_z[fin].double(), ref_z[fin], atol=1e-5)
    assert torch.allclose(out_img.double(), ref_img, atol=1e-6)
    assert not torch.equal(out_z[leak], zb[leak])                   # the leaks were painted over


def test_hair_volume_blur_is_a_zero_padded_box_filter():
    """The running-sum blur equals the direct window mean (zeros outside) at every radius, also wider than the
    image."""
    from prn_blender.synth.accessories import _blur
    a = (torch.rand(2, 1, 90, 70, generator=torch.Generator().manual_seed(0)) > 0.6).double()

    def box(x, r, dim):                               # (n,n) band matrix of 1/(2r+1) within r
        i = torch.arange(x.shape[dim])
        win = ((i[:, None] - i[None]).abs() <= r).double() / (2 * r + 1)
        return torch.movedim(torch.movedim(x, dim, -1) @ win, -1, dim)

    for r in (1, 4, 30, 60):
        ref = a
        for _ in range(2):
            ref = box(box(ref, r, -1), r, -2)
        assert torch.allclose(_blur(a.float(), r).double(), ref, atol=1e-5), r


def test_expose_meters_the_face_and_clips_at_full_exposure():
    from prn_blender.synth.sampler import expose
    n, C = 256, 352
    g = torch.Generator().manual_seed(2)
    layer = torch.ones(64, 4, C, C)
    layer[:, :3] = torch.rand(64, 3, 1, 1, generator=g) * 0.07 + 0.15       # dim heads: gain > 1, no clipping
    layer[:, :3, :, C // 2:] *= 2.0                                          # a lit side
    pos = torch.zeros(64, 3, n, n)
    pos[:, :, 60:200, 70:190] = 1.0                                          # the face pixels
    out = expose(layer, pos, torch.Generator().manual_seed(0), target=(0.3, 0.45))
    m = (C - n) // 2
    lum = out[:, :3, m + 60:m + 200, m + 70:m + 190].mean((1, 2, 3))
    gain = out[:, :3] / layer[:, :3]
    assert torch.allclose(gain, gain[:, :1, :1, :1].expand_as(gain), atol=1e-5)   # one gain per image, shading kept
    assert float(lum.min()) >= 0.3 - 1e-4 and float(lum.max()) <= 0.45 + 1e-4 and float(lum.std()) > 0.03
    assert torch.equal(out[:, 3], layer[:, 3])
    # premultiplied colour never exceeds the coverage
    half = torch.ones(2, 4, C, C) * 0.5
    half[:, :3] = 0.2
    out = expose(half, pos[:2], g, target=(0.9, 0.9))
    assert float((out[:, :3] - out[:, 3:]).max()) <= 1e-6 and float(out[:, :3].max()) == 0.5


def test_augment_composites_the_head_layer_over_the_background():
    """Shrinking the crop reveals more canvas, then background: never a stretched (replicated) border."""
    from prn_blender.synth.sampler import augment
    n, C = 256, 352
    layer = torch.zeros(1, 4, C, C)
    layer[:, 0], layer[:, 3] = 1.0, 1.0                           # opaque red over the whole canvas
    bg = torch.zeros(1, 3, n, n)
    bg[:, 2] = 1.0                                                # blue background
    pos = torch.zeros(1, 3, n, n)
    img, _ = augment(bg, pos, torch.Generator().manual_seed(0), rot_deg=0, trans=0, scale=(0.5, 0.5),
                     color=(1.0, 1.0), layer=layer, background=bg)
    assert torch.allclose(img[0, :, 128, 128], torch.tensor([1.0, 0.0, 0.0]))     # centre: the layer
    assert torch.allclose(img[0, :, 2, 2], torch.tensor([0.0, 0.0, 1.0]))         # beyond the canvas: background
    # a 0.5x shrink shows the 352-pixel canvas as a 176-pixel square
    red = img[0, 0] > 0.5
    assert abs(int(red[128].sum()) - C // 2) <= 2


def test_augment_moves_image_and_position_map_together():
    from prn_blender.synth.sampler import augment
    pos = torch.zeros(1, 3, 256, 256)
    pos[0, :, 100, 100] = torch.tensor([70.0, 150.0, 10.0])      # a "face pixel" whose 3D point is at (70,150)
    img = torch.zeros(1, 3, 256, 256)
    img[0, :, 149:152, 69:72] = 1.0                               # the image shows that point
    g = torch.Generator().manual_seed(4)
    img2, pos2 = augment(img, pos, g, color=(1.0, 1.0))
    x, y, z = pos2[0, :, 100, 100].tolist()
    yy, xx = np.unravel_index(int(img2[0, 0].argmax()), (256, 256))
    assert abs(xx - x) <= 1.0 and abs(yy - y) <= 1.0
    assert pos2[0, :, 0, 0].abs().sum() == 0                     # off-face pixels stay zero


def test_distract_puts_the_next_samples_head_beside_the_subject():
    """sampler.distract: with prob 1 each background gets the next sample's head (here a flat square of that
    sample's colour on its canvas), scaled 0.5-1.2 and beside the crop centre; with prob 0 the backgrounds are
    returned untouched and the generator advances the same (later draws do not depend on prob)."""
    from prn_blender.synth.sampler import distract
    B, n, C, half = 64, 128, 176, 50
    cols = torch.rand(B, 3) * 0.5 + 0.5
    layer = torch.zeros(B, 4, C, C)
    c = C // 2
    layer[:, :3, c - half:c + half, c - half:c + half] = cols[:, :, None, None]
    layer[:, 3, c - half:c + half, c - half:c + half] = 1
    bg = torch.zeros(B, 3, n, n)
    g0, g1 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert distract(bg, layer, g0, prob=0.0) is bg
    out = distract(bg, layer, g1, prob=1.0)
    assert torch.equal(torch.rand(5, generator=g0), torch.rand(5, generator=g1))
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    seen = 0
    for i in range(B):
        cov = out[i].amax(0) > 0
        if not cov.any():                      # placed wholly outside the crop
            continue
        seen += 1
        full = out[i][:, cov] / cols[(i + 1) % B][:, None]          # the next sample's colour, times coverage
        assert torch.allclose(full, full[:1].expand_as(full), atol=1e-4)
        x = float(xx[cov].mean())
        assert abs(x - n / 2) > 0.2 * n                             # beside the subject, not on it
        inner = out[i].amax(0) > 0.999 * cols[(i + 1) % B].amax()
        edge = inner[0].any() or inner[-1].any() or inner[:, 0].any() or inner[:, -1].any()
        if inner.any() and not edge:                                # side of the fully covered part: 2 * half * z
            side = float(inner.sum(1).max())
            assert 2 * half * 0.5 - 2 <= side <= 2 * half * 1.2 + 1
    assert seen > B // 2


def test_yaw_prior_is_a_setting():
    """sample_yaw (sample_params, train.py --yaw-uniform P): a share P of the scenes has yaw uniform over
    +-max_yaw, the rest N(0, 25 deg) (P(|yaw| > 45) = 0.5 and 0.072); the default is the held-out benchmark's 0.4."""
    from prn_blender.synth.sampler import YAW_UNIFORM, sample_yaw
    far = {}
    for share in (0.0, YAW_UNIFORM, 1.0):
        yaw = sample_yaw(20000, torch.Generator().manual_seed(2), yaw_uniform=share)
        assert float(yaw.abs().max()) <= 90.0
        far[share] = float((yaw.abs() > 45).float().mean())
    assert far[0.0] == pytest.approx(0.072, abs=0.01) and far[1.0] == pytest.approx(0.5, abs=0.015)
    assert far[YAW_UNIFORM] == pytest.approx(0.4 * 0.5 + 0.6 * 0.072, abs=0.015)


def test_photo_crops_are_squares_inside_the_photo():
    """photos.photo_crop on a photo whose red channel is its x and green channel its y coordinate: each crop is an
    axis-aligned square of a fifth to all of the photo's shorter side, inside the photo."""
    from prn_blender.synth.photos import photo_crop
    H, W, B, n = 300, 500, 64, 32
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    g = torch.Generator().manual_seed(1)
    frac = torch.rand(B, generator=g) * 0.8 + 0.2
    out = photo_crop(torch.stack([xs / W, ys / H, torch.zeros_like(xs)]), frac, torch.rand(B, generator=g),
                     torch.rand(B, generator=g), n)
    x, y = out[:, 0] * W, out[:, 1] * H                          # photo pixels each background pixel came from
    assert float(x.std(1).max()) < 1e-3 and float(y.std(2).max()) < 1e-3        # axis-aligned: x by column only
    dx, dy = x[:, 0, -1] - x[:, 0, 0], y[:, -1, 0] - y[:, 0, 0]
    torch.testing.assert_close(dx, dy, atol=1e-2, rtol=0)                       # square
    torch.testing.assert_close(dy * n / (n - 1), frac * H, atol=0.05, rtol=0)   # pixel centres span (n-1)/n of it
    assert float(x.min()) >= 0 and float(x.max()) <= W and float(y.min()) >= 0 and float(y.max()) <= H


def test_panorama_views_look_where_they_are_pointed():
    """photos.panorama_view on a panorama that stores each pixel's own direction (cos, sin of azimuth; elevation):
    the view's centre looks at its heading and pitch, its width spans its field of view, up is up, and the view
    wraps around the panorama's seam."""
    from prn_blender.synth.photos import panorama_view
    H, W, n = 256, 512, 65
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    az, el = xs / W * 2 * math.pi - math.pi, math.pi / 2 - ys / H * math.pi
    pano = torch.stack([az.cos(), az.sin(), el])
    pano = torch.cat([pano[:, :, -1:], pano, pano[:, :, :1]], 2)                # wrapped, as load_panoramas does
    fov = torch.tensor([60.0, 30.0, 75.0]) * math.pi / 180
    heading, pitch = torch.tensor([0.0, 1.0, math.pi]), torch.tensor([0.0, 0.3, -0.2])
    v = panorama_view(pano, fov, heading, pitch, n)
    a, e = torch.atan2(v[:, 1], v[:, 0]), v[:, 2]
    torch.testing.assert_close(a[:, n // 2, n // 2].remainder(2 * math.pi), heading.remainder(2 * math.pi),
                               atol=0.004, rtol=0)                               # a third of a panorama pixel
    torch.testing.assert_close(e[:, n // 2, n // 2], pitch, atol=0.004, rtol=0)
    half = torch.atan(torch.tan(fov / 2) * (n - 1) / n)                          # the outer pixel centres
    torch.testing.assert_close(a[0, n // 2, -1] - a[0, n // 2, 0], 2 * half[0], atol=0.004, rtol=0)
    assert bool((e[:, 0, n // 2] > e[:, -1, n // 2] + 0.4).all())               # row 0 is up
    seam = a[2, n // 2]                                                          # looking at the seam: no jump
    assert float((seam[1:] - seam[:-1]).remainder(2 * math.pi).max()) < 0.05


def test_photo_backgrounds_replace_a_share_reproducibly():
    """PhotoBackgrounds (train.py --photo-backgrounds P): the real photos and panoramas load from the installed
    packages; a share P of the backgrounds is replaced (prob 0: none, 1: all), the same for the same seed, in
    [0, 1]; both sources are used."""
    from prn_blender.synth import photos
    pb = photos.PhotoBackgrounds()
    assert len(pb.photos) == len(photos.PHOTOS) and len(pb.panoramas) == len(photos.PANORAMAS)
    assert all(min(p.shape[1:]) <= photos.MAX_SIDE for p in pb.photos)
    lum = torch.tensor([0.2126, 0.7152, 0.0722])[:, None, None]
    assert all(abs(float((p * lum).sum(0).median()) - 1) < 0.01 for p in pb.panoramas)   # linear, median 1
    bg = torch.rand(48, 3, 32, 32)
    assert torch.equal(pb(bg, torch.Generator().manual_seed(0), 0.0), bg)
    out = pb(bg, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(out, pb(bg, torch.Generator().manual_seed(0), 1.0))
    assert bool((out != bg).flatten(1).any(1).all()) and 0 <= float(out.min()) and float(out.max()) <= 1
    half = pb(bg, torch.Generator().manual_seed(0), 0.5)
    same = (half == bg).flatten(1).all(1)
    assert 10 < int(same.sum()) < 38 and torch.equal(half[~same], out[~same])   # the same draws, a share applied
    monkeypatch = pytest.MonkeyPatch()
    for share in (0.0, 1.0):                                                     # each source on its own
        monkeypatch.setattr(photos, "PANORAMA_SHARE", share)
        only = pb(bg, torch.Generator().manual_seed(0), 1.0)
        assert bool((only != bg).flatten(1).any(1).all()) and not torch.equal(only, out)
    # about half of them mirrored: a photo whose red channel is its x coordinate, unchanged in colour
    monkeypatch.setattr(photos, "BRIGHTNESS", (1.0, 1.0))
    monkeypatch.setattr(photos, "WHITE_BALANCE", 0.0)
    pb.photos = [torch.linspace(0.1, 0.9, 200).expand(3, 100, 200)]
    monkeypatch.setattr(photos, "PANORAMA_SHARE", 0.0)
    x = pb(bg, torch.Generator().manual_seed(0), 1.0)[:, 0, 0]
    flipped = x[:, -1] < x[:, 0]
    assert 10 < int(flipped.sum()) < 38 and bool(((x[:, -1] - x[:, 0]).abs() > 0.05).all())
    monkeypatch.undo()


def test_jpeg_code_is_what_a_jpeg_decoder_shows():
    """sampler.jpeg_code (train.py --jpeg): at qualities 30-95 the image is within about a grey level of OpenCV's
    encode + decode at the same quality, several times closer to it than to the uncoded image; the error grows as
    the quality drops; each sample uses its own quality."""
    import cv2
    from skimage import data

    from prn_blender.synth.sampler import jpeg_code
    rgb = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    errors = []
    for q in (30, 60, 95):
        enc = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
        ref = cv2.cvtColor(cv2.imdecode(enc, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
        ours = jpeg_code(t, torch.tensor([float(q)]))[0].permute(1, 2, 0).numpy() * 255
        to_cv2, coded = float(np.abs(ours - ref).mean()), float(np.abs(ours - rgb).mean())
        assert to_cv2 < 1.3 and coded > 2 * to_cv2, (q, to_cv2, coded)
        errors.append(coded)
    assert errors[0] > errors[1] > errors[2]
    both = jpeg_code(t.repeat(2, 1, 1, 1), torch.tensor([30.0, 95.0]))
    torch.testing.assert_close(both[0], jpeg_code(t, torch.tensor([30.0]))[0])
    torch.testing.assert_close(both[1], jpeg_code(t, torch.tensor([95.0]))[0])


def test_compress_codes_a_share_reproducibly():
    """sampler.compress: prob 0 leaves the batch as it is, prob 1 codes every sample, a share between codes about
    that share with the same draws (the generator's stream does not depend on the share); in [0, 1], same shape."""
    from prn_blender.synth.sampler import compress
    img = F.interpolate(torch.rand(40, 3, 16, 16), size=(256, 256), mode="bilinear", align_corners=False)
    assert torch.equal(compress(img, torch.Generator().manual_seed(0), 0.0), img)
    out = compress(img, torch.Generator().manual_seed(0), 1.0)
    assert out.shape == img.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, compress(img, torch.Generator().manual_seed(0), 1.0))
    assert bool(((out - img).abs().flatten(1).mean(1) > 1e-3).all())
    half = compress(img, torch.Generator().manual_seed(0), 0.5)
    same = (half == img).flatten(1).all(1)
    assert 8 < int(same.sum()) < 32 and torch.equal(half[~same], out[~same])
