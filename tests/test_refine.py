"""The eye and mouth refiner (core.refine): patch frames, patch sampling, the window blend and its training."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prn_blender.core.layout import load_layout
from prn_blender.core.refine import (
    PATCH,
    REGIONS,
    RefineNet,
    Refiner,
    crop_patch,
    patch_frames,
    region_windows,
    sample_patches,
    save_refiner,
    to_image,
    to_patch,
    window_weight,
)


def _frames(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.rand(n, generator=g) * 100 + 50, torch.rand(n, generator=g) * 100 + 50,
                        torch.rand(n, generator=g) * 40 + 20, torch.rand(n, generator=g) - 0.5], -1)


def test_patch_and_image_coordinates_are_inverse():
    f = _frames()
    q = torch.rand(3, 2, 5, 7) - 0.5
    p = to_image(q, f)
    assert torch.allclose(to_patch(p, f), q, atol=1e-5)
    # the patch's centre is the frame's centre, its corners lie side/sqrt(2) away from it
    c = to_image(torch.zeros(3, 2, 1, 1), f)[..., 0, 0]
    assert torch.allclose(c, f[:, :2])
    corner = to_image(torch.full((3, 2, 1, 1), 0.5), f)[..., 0, 0]
    assert torch.allclose((corner - c).norm(dim=-1), f[:, 2] / np.sqrt(2), rtol=1e-5)


def test_a_photos_patch_is_the_training_patch():
    """crop_patch (inference, OpenCV, one image) reads the pixels sample_patches (training, torch, a batch) reads;
    with the anti-aliasing filter when the patch shrinks the photo a lot."""
    rng = np.random.default_rng(0)
    img = cv2_smooth(rng.random((200, 240, 3)).astype(np.float32))
    f = _frames()
    batch = sample_patches(torch.from_numpy(img).permute(2, 0, 1)[None], f[None])[0].permute(0, 2, 3, 1).numpy()
    for r in range(3):
        assert np.abs(crop_patch(img, f[r].numpy()) - batch[r]).max() < 0.02   # OpenCV's fixed-point weights
    # a patch four times larger than its pixels: filtered, it is close to the mean of each 4x4 cell
    noise = rng.random((400, 400, 3)).astype(np.float32)
    big = crop_patch(noise, np.array([200.0, 200.0, 4.0 * PATCH, 0.0]))
    assert big.std() < 0.1 < noise.std()


def cv2_smooth(img):
    import cv2
    return cv2.GaussianBlur(img, (0, 0), 3)


def test_frames_follow_the_face():
    lay = load_layout()
    lm = torch.from_numpy(lay.canonical[lay.kpt_vertex][:, :2] * np.array([1, -1]) * 3 + 128).float()[None]
    f = patch_frames(lm)[0]
    names = list(REGIONS)
    # the eyes' patches sit on the eyes (a little above, for the brows), the mouth's on the mouth
    for r, name in enumerate(names):
        centre = lm[0, list(REGIONS[name][1])].mean(0)
        assert (f[r, :2] - centre).norm() < 0.15 * f[r, 2]
    # twice the face: twice the side; a turned face: a turned frame
    assert torch.allclose(patch_frames(lm * 2)[0, :, 2], 2 * f[:, 2], rtol=1e-5)
    a = 0.3
    R = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float32)
    ft = patch_frames(lm @ R.T)[0]
    assert torch.allclose(ft[:, 3], f[:, 3] + a, atol=1e-5)
    assert torch.allclose(ft[:, :2], f[:, :2] @ R.T, atol=1e-3)


def test_window_weight_fades_to_the_first_pass_at_the_border():
    lay = load_layout()
    for w in region_windows(lay):
        wt = window_weight(lay, w)
        assert wt.shape == w.shape
        assert wt[0].max() < 0.2 and wt[-1].max() < 0.2 and wt[:, 0].max() < 0.2 and wt[:, -1].max() < 0.2
        assert (wt[~lay.mask[w.slices]] == 0).all()
    # every landmark of a region lies where its window is taken at full weight
    for name, w in zip(REGIONS, region_windows(lay)):
        xy = lay.kpt_xy[list(REGIONS[name][0])]
        assert (window_weight(lay, w)[xy[:, 1] - w.v0, xy[:, 0] - w.u0] == 1).all()


def _known_refiner(tmp_path, lay, truth, first):
    """A refiner whose heads put out ``truth``'s windows as seen from ``first``'s frames (biases only)."""
    windows = region_windows(lay)
    model = RefineNet([w.shape for w in windows], width=4)
    lms = torch.from_numpy(lay.landmarks(first)[None, :, :2])
    frames = patch_frames(lms)[0]
    t = torch.from_numpy(truth).permute(2, 0, 1)
    with torch.no_grad():
        for r, (hd, w) in enumerate(zip(model.heads, windows)):
            hd.weight.zero_()
            hd.bias.copy_(to_patch(t[:2, w.v0:w.v1, w.u0:w.u1], frames[r]).reshape(-1))
    return save_refiner(model, tmp_path / "r.safetensors", tuple(REGIONS), windows, lay.name, {"test": 1})


def test_refiner_replaces_the_windows_xy_and_nothing_else(tmp_path):
    lay = load_layout()
    rng = np.random.default_rng(1)
    first = np.zeros((256, 256, 3), np.float32)
    v, u = np.mgrid[:256, :256]
    first[..., 0], first[..., 1], first[..., 2] = 40 + u * 0.7, 30 + v * 0.7, rng.random((256, 256)) * 50
    first *= lay.mask[..., None]
    truth = first + np.float32(rng.normal(0, 2, (1, 1, 3)))      # the truth: the first pass moved by a few pixels
    truth[..., 2] += 5
    path = _known_refiner(tmp_path, lay, truth, first)
    ref = Refiner(path, lay)
    out = ref(np.zeros((260, 260, 3), np.float32), first)
    inside = np.zeros((256, 256), bool)
    full = np.zeros((256, 256), bool)
    for w in ref.windows:
        inside[w.slices] = True
        full[w.slices] |= window_weight(lay, w) == 1
    assert np.allclose(out[full][:, :2], truth[full][:, :2], atol=1e-2)       # xy from the refiner
    assert np.array_equal(out[..., 2], first[..., 2])                         # z kept
    assert np.array_equal(out[~inside], first[~inside])                       # nothing outside its windows


@pytest.mark.shared
def test_training_writes_a_refiner_the_reconstructor_runs_and_ship_cards_it(tmp_path, shared, monkeypatch):
    """A few training steps give a refiner the reconstructor runs: it moves x, y inside its windows only; --init
    goes on from it; --ship copies it to the add-on's weights and writes its card (sha256, command, curve, the
    expression response without and with it)."""
    import hashlib

    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    from prn_blender.train import refine as R
    out = tmp_path / "r"
    args = ["--steps", "3", "--batch", "2", "--width", "4", "--threads", "1", "--shared", str(shared)]
    assert R.main(["--out", str(out), *args]) == 0
    path = out / "refiner.safetensors"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3] and log[0]["samples"] == 6 and log[0]["lr"] > 0
    assert R.main(["--out", str(tmp_path / "r2"), "--init", str(path), *args]) == 0
    assert R.Refiner(tmp_path / "r2" / "refiner.safetensors", load_layout()).meta["argv"].startswith("--out ")
    with pytest.raises(SystemExit, match="regions, windows or width differ"):
        R.main(["--out", str(tmp_path / "r3"), "--init", str(path), *args[:5], "8", *args[6:]])
    for name, f in (("DEFAULT_REFINER", "prn-ict-refine.safetensors"), ("CARD", "CARD.md"), ("CURVE", "c.png")):
        monkeypatch.setattr(R, name, tmp_path / "ship" / f)
    (tmp_path / "ship").mkdir()
    assert R.main(["--out", str(out), "--ship", "--faces", "1", "--shared", str(shared)]) == 0
    card = (tmp_path / "ship" / "CARD.md").read_text()
    shipped = (tmp_path / "ship" / "prn-ict-refine.safetensors").read_bytes()
    assert shipped == path.read_bytes() and hashlib.sha256(shipped).hexdigest() in card
    assert "| shipped, refiner none |" in card and "| shipped, refiner r |" in card and "--steps 3" in card
    assert (tmp_path / "ship" / "c.png").stat().st_size > 0
    img = np.full((240, 240, 3), 0.5, np.float32)
    lay = load_layout()
    lm = lay.canonical[lay.kpt_vertex][:, :2] * np.array([1, -1]) * 0.9 + 120
    on = FaceReconstructor(device="cpu", refiner=path, options=InferenceOptions(refine=True))
    off = FaceReconstructor(device="cpu", refiner=path)                  # off by default
    assert on.refiner is not None and off.refiner is None
    a, b = on(img, landmarks=lm, texture=False)[0], off(img, landmarks=lm, texture=False)[0]
    moved = np.abs(a.position_map - b.position_map).max(-1) > 1e-4
    windows = np.zeros((256, 256), bool)
    for w in on.refiner.windows:
        windows[w.slices] = True
    assert moved.any() and not (moved & ~windows).any()
    assert np.array_equal(a.position_map[..., 2], b.position_map[..., 2])
    # one region's head alone: the same surface in its window, the others' windows left to the first pass
    assert R.main(["--out", str(out), "--ship", "--regions", "mouth", "--faces", "1", "--shared", str(shared),
                   "--card-note", "a note line"]) == 0
    card = (tmp_path / "ship" / "CARD.md").read_text()
    mouth = Refiner(tmp_path / "ship" / "prn-ict-refine.safetensors", lay)
    assert mouth.regions == ["mouth"] and "| shipped, refiner r (mouth) |" in card and "a note line" in card
    pos = b.position_map
    full, only = on.refiner(img, pos), mouth(img, pos)
    w = mouth.windows[0]
    np.testing.assert_allclose(only[w.slices], full[w.slices], atol=1e-3)
    rest = np.ones((256, 256), bool)
    rest[w.slices] = False
    assert np.array_equal(only[rest], pos[rest])


def test_shipped_refiner_fits_the_shipped_model_and_its_card():
    """The shipped refiner (train.refine --ship) runs on the shipped model's layout, redraws the mouth, and its card
    names its bytes' sha256 and the command that trained it."""
    import hashlib

    from prn_blender.core.refine import DEFAULT_REFINER
    from prn_blender.core.weights import load_model
    _, lay, _ = load_model()
    ref = Refiner(DEFAULT_REFINER, lay)
    card = DEFAULT_REFINER.with_name("REFINER_CARD.md").read_text()
    assert ref.regions == ["mouth"] and hashlib.sha256(DEFAULT_REFINER.read_bytes()).hexdigest() in card
    assert "python -m prn_blender.train.refine --out " in card and "--ship --regions mouth" in card


def test_the_shipped_refiner_is_used_only_where_it_fits(tmp_path, monkeypatch):
    """With refine on and no refiner named, the reconstructor takes the shipped refiner only when it exists and
    fits the network's layout, and runs without one otherwise; a named refiner that does not fit is an error."""
    from prn_blender.core import reconstruct as R
    from prn_blender.core.weights import WeightsError
    lay = load_layout()
    windows = region_windows(lay)
    other = save_refiner(RefineNet([w.shape for w in windows], width=4), tmp_path / "other.safetensors",
                         tuple(REGIONS), windows, "another-layout", {})
    on = R.InferenceOptions(refine=True)
    for shipped in (other, tmp_path / "missing.safetensors"):
        monkeypatch.setattr(R, "DEFAULT_REFINER", shipped)
        assert R.FaceReconstructor(device="cpu", options=on).refiner is None
    with pytest.raises(WeightsError, match="not a refiner for UV layout"):
        R.FaceReconstructor(device="cpu", refiner=other, options=on)
