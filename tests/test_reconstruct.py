"""Reconstruction API and CLI with the shipped weights (no ../shared needed)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prn_blender.core.layout import load_layout
from prn_blender.core.network import ResFCN256
from prn_blender.core.weights import DEFAULT_WEIGHTS, WeightsError, load_model, save_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data
    from prn_blender.core.image_io import save_image
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    save_image(p, data.astronaut() / 255.0)
    return p


@pytest.fixture(scope="module")
def rec():
    from prn_blender.core.reconstruct import FaceReconstructor
    return FaceReconstructor(device="cpu")


def test_shipped_weights_and_layout_match():
    model, lay, md = load_model()
    assert lay.name == "ict-face-v2" and md["meta"]["data"].startswith("ICT-FaceKit")
    assert DEFAULT_WEIGHTS.with_name("MODEL_CARD.md").exists()


def test_mismatched_or_missing_weights_are_clear_errors(tmp_path):
    p = save_weights(ResFCN256(2), tmp_path / "w.safetensors", "prnet-bfm")
    with pytest.raises(WeightsError, match="prnet-bfm"):
        load_model(p, layout="ict-face-v2")
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(WeightsError):
        load_model(tmp_path / "junk.safetensors")


def test_face_result_fields(rec, astronaut):
    faces = rec(str(astronaut))
    assert len(faces) >= 1
    f = faces[0]
    lay = load_layout()
    assert f.vertices.shape == (lay.n_vertices, 3) and f.triangles.shape == lay.triangles.shape
    assert f.uvs.shape == (lay.n_vertices, 2) and f.landmarks.shape == (68, 3)
    assert f.position_map.shape == (256, 256, 3) and f.texture.shape == (256, 256, 3)
    assert f.texture_mask.dtype == bool and f.depth.shape == (512, 512)
    assert f.image_size == (512, 512) and 0.0 <= f.confidence <= 1.0
    # confidence separates a real face (0.79 measured) from a featureless crop (0.03) - the video tracker re-detects
    # below 0.3
    assert f.confidence > 0.5, f.confidence
    flat = rec(np.full((512, 512, 3), 128, np.uint8), box=(150, 60, 260, 190), texture=False)[0]
    assert flat.confidence < 0.3, flat.confidence
    # detected: two passes
    assert set(f.timings) == {"detect", "first_pass", "crop", "net", "uncrop", "refine", "texture"}
    np.testing.assert_allclose(f.landmarks, rec.layout.landmarks(f.position_map))   # at the calibrated pixels
    np.testing.assert_allclose(f.landmarks, f.vertices[rec.layout.kpt_vertex])
    assert (rec.layout.kpt_xy != lay.kpt_xy).any(1).sum() > 60        # the shipped weights record their own
    np.testing.assert_allclose(np.linalg.det(f.pose.rotation), 1.0, atol=1e-6)
    # explicit box and landmark crops give results too; the image may be an array of any dtype
    g = rec((np.asarray(__import__("PIL").Image.open(astronaut)).astype(np.uint16) * 257), box=(150, 60, 260, 190))[0]
    assert g.image_size == (512, 512)
    h = rec(str(astronaut), landmarks=f.landmarks)[0]
    assert np.isfinite(h.vertices).all()


def test_texture_is_as_fine_as_the_photo_and_never_aliases(rec, astronaut):
    """A face's UV texture gets the smallest side of 256 x 2^k (up to TEXTURE_MAX) whose texels span at most one
    photo pixel: the astronaut's 256 (0.55 px a texel), the same face in the photo upscaled x4 1024, which area-
    filtered back to 256 texels is the 256 texture, and its colours the same. A 256-texel texture of that large face
    reads an area-filtered photo: a one-pixel checkerboard over it (+-0.2) barely shows, where bilinear reads of
    the full resolution pick up much of it."""
    import cv2

    from prn_blender.core.constants import TEXTURE_MAX
    from prn_blender.core.reconstruct import texel_spacing, texture_from_image, texture_side
    f = rec(str(astronaut))[0]
    lay = rec.layout
    assert 0.3 < texel_spacing(f.position_map, lay) < 1 and f.texture.shape == (256, 256, 3)
    k = 4
    img = np.asarray(__import__("PIL").Image.open(astronaut), np.float32) / 255
    big = np.clip(cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC), 0, 1)
    pos, verts = f.position_map.copy(), f.vertices.copy()
    for a in (pos.reshape(-1, 3), verts):                     # the same surface in the x4 photo's pixels
        a[:, :2] = (a[:, :2] + 0.5) * k - 0.5
        a[:, 2] *= k
    colors, tex, mask, depth = texture_from_image(big, pos, verts, lay)
    assert tex.shape == (1024, 1024, 3) and mask.shape == (1024, 1024) and depth.shape == big.shape[:2]
    down = cv2.resize(tex, (256, 256), interpolation=cv2.INTER_AREA)
    full = (cv2.resize(mask.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA) > 0.999) & f.texture_mask
    assert full.sum() > 0.8 * f.texture_mask.sum()
    assert np.abs(down - f.texture)[full].mean() < 0.01 and np.abs(colors - f.colors).mean() < 0.01
    checker = (np.indices(big.shape[:2]).sum(0) % 2 * 0.4 - 0.2).astype(np.float32)[..., None]
    _, small, smask, _ = texture_from_image(np.clip(big + checker, 0, 1), pos, verts, lay, size=256)
    plain = cv2.remap(np.clip(big + checker, 0, 1), pos[..., 0], pos[..., 1], cv2.INTER_LINEAR)
    both = smask & f.texture_mask
    assert np.abs(small - f.texture)[both].mean() < 0.03 and np.abs(plain - f.texture)[both].mean() > 0.045
    assert texture_side(0.5) == 256 and texture_side(1.0) == 256 and texture_side(1.01) == 512
    assert texture_side(100.0) == TEXTURE_MAX and texture_side(5.0, 256) == 256


def test_detected_faces_get_a_second_pass_from_their_landmarks(rec, astronaut):
    """A face the detector found is reconstructed again from a crop made from the first pass's landmarks (what
    ``landmarks=`` does, here without the blurred-surround views, which only a second pass has), the first pass in
    FIRST_PASS_VIEWS without the periphery view; a given box, roi or landmarks are used as they are, in one pass."""
    from prn_blender.core.constants import FIRST_PASS_VIEWS
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    once = FaceReconstructor(device="cpu", options=InferenceOptions(recrop=False))
    (scale, turn), = FIRST_PASS_VIEWS
    first = FaceReconstructor(device="cpu", options=InferenceOptions(recrop=False, scales=(scale,), turns=(turn,),
                                                                     periphery=False))(str(astronaut), texture=False)[0]
    sharp = FaceReconstructor(device="cpu", options=InferenceOptions(surround_blur=None))
    twice = sharp(str(astronaut), texture=False)[0]
    own = rec.crop_landmarks(first)                     # the network's own landmark pixels make the crop
    again = rec(str(astronaut), landmarks=own, texture=False)[0]
    assert twice.crop == again.crop == rec.crops_for(None, landmarks=own)[0] != first.crop
    assert rec(str(astronaut), texture=False)[0].crop == twice.crop
    np.testing.assert_allclose(twice.landmarks, again.landmarks)
    assert "first_pass" in twice.timings and "first_pass" not in first.timings | again.timings
    box = (150, 60, 260, 190)
    given = rec(str(astronaut), box=box, texture=False)[0]
    assert given.crop == rec.crops_for(None, box=box)[0] and "first_pass" not in given.timings
    np.testing.assert_allclose(given.landmarks, once(str(astronaut), box=box, texture=False)[0].landmarks)


def test_pick_reconstructs_only_the_chosen_face_of_a_group_photo(rec, monkeypatch):
    """pick(image, k): the k-th face counted largest first and how many were found, the same result as
    reconstructing every face and ranking them (result.largest_first), with the full pass run on that face alone;
    a rank past the faces found is a clear error."""
    import cv2
    from skimage import data

    from prn_blender.core.reconstruct import ReconstructionError
    from prn_blender.core.result import largest_first
    a = data.astronaut()
    img = np.zeros((512, 812, 3), np.uint8)
    img[:, :512], img[100:400, 512:] = a, cv2.resize(a, (300, 300), interpolation=cv2.INTER_AREA)

    class Spy:                                        # the network's batch sizes, one per pass
        def __init__(self, predictor):
            self.predictor, self.sizes = predictor, []

        def __getattr__(self, name):
            return getattr(self.predictor, name)

        def __call__(self, crops):
            self.sizes.append(len(crops))
            return self.predictor(crops)
    spy = Spy(rec.predictor)
    monkeypatch.setattr(rec, "predictor", spy)
    every = largest_first(rec(img))
    assert len(every) == 2 and every[0].crop.center[0] < 512 < every[1].crop.center[0]
    full_pass = spy.sizes[-1] // 2                     # the views of one face in the full pass
    for k in (1, 2):
        spy.sizes = []
        face, found = rec.pick(img, k)
        assert found == 2 and spy.sizes[-1] == full_pass and len(spy.sizes) == 2
        np.testing.assert_allclose(face.landmarks, every[k - 1].landmarks, atol=1e-3)
        assert face.crop == every[k - 1].crop and face.texture_mask.any() and "first_pass" in face.timings
    with pytest.raises(ReconstructionError, match=r"shows 2 face\(s\); face 3 was asked for"):
        rec.pick(img, 3)
    with pytest.raises(ValueError, match="counts from 1"):
        rec.pick(img, 0)


def test_made_crops_are_zoomed_about_their_centre_given_ones_are_not():
    """Crops made from landmarks or a detector box are shrunk by the zoom about their centre; a 3DDFA roi box
    and an explicit crop are used as given."""
    from prn_blender.core.crop import crop_from_box, crop_from_landmarks, crop_from_roi
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    from prn_blender.core.result import CropTransform
    rec = FaceReconstructor(device="cpu", options=InferenceOptions(zoom=1.3))
    pts = np.array([[150.0, 100, 0], [250, 220, 0], [190, 160, 0]])
    roi, box = (90, 50, 310, 270), (150, 60, 260, 190)
    for kw, ref in (({"landmarks": pts}, crop_from_landmarks(pts)), ({"box": box}, crop_from_box(box))):
        (c,) = rec.crops_for(None, **kw)
        assert c.center == ref.center and c.size == pytest.approx(ref.size / 1.3), kw
    assert rec.crops_for(None, roi=roi) == [crop_from_roi(roi)]
    given = CropTransform(center=(200.0, 150.0), size=180.0)
    assert rec.crops_for(None, crop=given) == [given]


def test_surround_blur_runs_the_second_pass_views_again_blurred_and_keeps_the_jaw_sharp(rec, astronaut, monkeypatch):
    """InferenceOptions.surround_blur = G: the second pass runs the default views (the zoomed ones and the wide one)
    and once more the zoomed ones (mirrored ones too) blurred outside the first pass's landmark hull grown by G
    (core.context: inside it, the same pixels). The surface comes from the blurred views but within JAW_SHARP of
    the jaw line, so the jaw landmarks are the default run's and the others are not; the texture is sampled from
    the sharp photo, and a face given by landmarks (no first pass) is not blurred."""
    import torch

    from prn_blender.core.constants import FIRST_PASS_VIEWS
    from prn_blender.core.context import context_mask
    from prn_blender.core.image_io import load_image
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions, jaw_weight, texture_from_image
    batches = {}

    class Spy:                                        # the network's input batches, one per pass
        def __init__(self, name, predictor):
            self.name, self.predictor = name, predictor

        def __getattr__(self, attr):
            return getattr(self.predictor, attr)

        def __call__(self, crops):
            batches.setdefault(self.name, []).append(crops.copy())
            return self.predictor(crops)

    def spy(name, r):
        monkeypatch.setattr(r, "predictor", Spy(name, r.predictor))
        return r
    sharp = spy("sharp", FaceReconstructor(device="cpu", options=InferenceOptions(surround_blur=None)))
    blur = spy("blur", FaceReconstructor(device="cpu", options=InferenceOptions(surround_blur=1.5)))
    a, b = sharp(str(astronaut))[0], blur(str(astronaut))[0]
    assert a.crop == b.crop
    tex = texture_from_image(load_image(astronaut), b.position_map, b.vertices, blur.layout)[1]
    np.testing.assert_array_equal(b.texture, tex)                      # sampled from the sharp photo
    (scale, turn), = FIRST_PASS_VIEWS
    first = FaceReconstructor(device="cpu", options=InferenceOptions(recrop=False, scales=(scale,), turns=(turn,),
                                                                     periphery=False))(str(astronaut), texture=False)[0]
    own = rec.crop_landmarks(first)
    views = rec.predictor.options.views
    sa, sb = batches["sharp"][-1], batches["blur"][-1]   # second pass: views, wide view, (blurred views), mirrored
    m = len(views)
    n, nb = m + 1, 2 * m + 1
    assert sa.shape == (2 * n, 256, 256, 3) and sb.shape == (2 * nb, 256, 256, 3)
    np.testing.assert_array_equal(sb[:n], sa[:n])                      # the sharp views and the wide view
    for j, (k, t) in enumerate(views):
        lm = b.crop.resized(k).turned(t).to_crop(own[:, :2])
        inside = context_mask(torch.from_numpy(lm)[None].float(), torch.tensor([1.5]))[0, 0].numpy() > 0
        assert 0.5 < inside.mean() < 0.95
        np.testing.assert_array_equal(sb[n + j][inside], sa[j][inside])
        assert np.abs(sb[n + j] - sa[j])[~inside].mean() > 0.01
        np.testing.assert_array_equal(sb[nb + n + j][:, ::-1][inside], sa[j][inside])   # its mirror
    w = jaw_weight(blur.predictor.layout, blur.layout)
    for lay in (blur.predictor.layout, blur.layout):
        kx, ky = lay.kpt_xy[:, 0], lay.kpt_xy[:, 1]
        assert (w[ky[:17], kx[:17]] == 0).all() and (w[ky[17:], kx[17:]] == 1).all()
    assert 0.02 < (w < 1)[blur.layout.mask].mean() < 0.3
    np.testing.assert_array_equal(b.landmarks[:17], a.landmarks[:17])  # the jaw line from the sharp views
    assert (np.abs(b.landmarks - a.landmarks)[17:, :2].max(1) > 0).all()     # the others from the blurred ones
    np.testing.assert_array_equal(blur(str(astronaut), landmarks=own, texture=False)[0].landmarks,
                                  sharp(str(astronaut), landmarks=own, texture=False)[0].landmarks)


def test_recrop_is_turned_with_a_rolled_head(astronaut):
    """A detected face's second pass is cropped turned with the first pass's head roll beyond +-roll_free degrees
    (crop_angle: a soft threshold, 0 within it); roll_free None keeps crops axis-aligned. On the astronaut turned by
    35 deg the re-crop's angle follows the turn, and the landmarks come back in the image frame."""
    import dataclasses as dc

    import cv2
    from skimage import data

    from prn_blender.core.constants import ROLL_FREE
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    rec = FaceReconstructor(device="cpu", options=InferenceOptions(turns=(0.0,), periphery=False))
    assert rec.predictor.options.roll_free == ROLL_FREE == 10.0
    face = rec(str(astronaut), texture=False)[0]
    for roll, want in ((-25.0, 15.0), (25.0, -15.0), (4.0, 0.0), (-10.0, 0.0)):
        turned = dc.replace(face, pose=dc.replace(face.pose, roll=roll))
        assert rec.crop_angle(turned) == pytest.approx(want), roll
    img = data.astronaut()
    M = cv2.getRotationMatrix2D((222.0, 140.0), 35.0, 1.0)          # counter-clockwise on screen
    im = cv2.warpAffine(img, M, (512, 512))
    up = rec(img, texture=False)[0].landmarks
    want = up.copy()
    want[:, :2] = up[:, :2] @ M[:, :2].T + M[:, 2]
    axis = FaceReconstructor(device="cpu", options=InferenceOptions(turns=(0.0,), periphery=False, roll_free=None))
    for r in (rec, axis):
        got = r(im, texture=False)[0]
        if r is rec:
            assert -35.0 < got.crop.angle < -15.0                      # the eye line's angle, less the free 10
        else:
            assert got.crop.angle == 0.0
        size = np.sqrt(np.prod(want[:, :2].max(0) - want[:, :2].min(0)))
        assert np.linalg.norm(got.landmarks[:, :2] - want[:, :2], axis=1).mean() < 0.08 * size


def test_photo_stored_sideways_with_exif_orientation(tmp_path, astronaut):
    """A phone portrait stored sideways with EXIF orientation 6: the face is found upright and every result stays in
    the stored pixels' frame (what Blender shows): the landmarks match the upright photo's, turned."""
    import cv2
    from skimage import data
    from test_core import jpeg_with_orientation

    from prn_blender.core.image_io import load_image
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    up = data.astronaut()
    stored = np.ascontiguousarray(np.rot90(up, 1))                       # turned counter-clockwise
    ok, buf = cv2.imencode(".jpg", stored[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    path = tmp_path / "portrait.jpg"
    path.write_bytes(jpeg_with_orientation(buf.tobytes(), 6))            # "turn 90 deg clockwise to show"
    rec = FaceReconstructor(device="cpu", options=InferenceOptions(turns=(0.0,), periphery=False))
    face = rec(str(path), texture=False)[0]
    ref = rec(up, texture=False)[0].landmarks
    w = up.shape[1]
    want = np.stack([ref[:, 1], w - 1 - ref[:, 0]], 1)                  # upright (x, y) -> stored pixels
    size = np.sqrt(np.prod(want.max(0) - want.min(0)))
    assert face.image_size == (stored.shape[1], stored.shape[0])
    assert 60 < abs(face.crop.angle) < 100
    assert np.linalg.norm(face.landmarks[:, :2] - want, axis=1).mean() < 0.05 * size
    same = rec(load_image(path), texture=False, turns=3)[0]            # an array says its turns itself
    np.testing.assert_allclose(same.landmarks, face.landmarks, atol=1e-3)


def test_the_zoom_is_the_models(tmp_path, astronaut):
    """A weights file may record its inference zoom (ship --zoom; an imported PRNet checkpoint records 1): crops use
    it unless the options give one, files without it get constants.INFERENCE_ZOOM, and at zoom 1 there is no wider
    view to run."""
    from prn_blender.core.constants import INFERENCE_ZOOM
    from prn_blender.core.crop import crop_from_landmarks
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    from prn_blender.core.result import CropTransform
    from prn_blender.core.weights import inference_zoom
    pts = np.array([[150.0, 100, 0], [250, 220, 0], [190, 160, 0]])
    ref = crop_from_landmarks(pts).size
    zoom = {}
    for name, meta in (("z13", {"inference_zoom": 1.3}), ("none", {}), ("z1", {"inference_zoom": 1.0})):
        w = save_weights(ResFCN256(2), tmp_path / f"{name}.safetensors", "ict-face-v2", meta)
        rec = FaceReconstructor(w, device="cpu", options=InferenceOptions(flip=False, turns=(0.0,), recrop=False))
        zoom[name] = rec.zoom
        assert rec.crops_for(None, landmarks=pts)[0].size == pytest.approx(ref / rec.zoom)
        over = FaceReconstructor(w, device="cpu", options=InferenceOptions(zoom=1.1))
        assert over.zoom == 1.1 and over.crops_for(None, landmarks=pts)[0].size == pytest.approx(ref / 1.1)
        crop = CropTransform(center=(222.0, 132.0), size=121.0)
        r = rec(str(astronaut), crop=crop, texture=False, periphery=True)[0]
        assert (r.wide_view is None) == (name == "z1"), name
    assert zoom == {"z13": 1.3, "none": INFERENCE_ZOOM, "z1": 1.0}
    with pytest.raises(WeightsError, match="inference zoom"):
        inference_zoom({"inference_zoom": 5})


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test, then as before."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_periphery_view_gives_the_surface_outside_the_landmark_hull(astronaut, one_thread):
    """With the wide view (the default for photos) the landmarks and the surface inside the landmarks' hull are
    those of the zoomed views alone; the periphery is blended towards the wide view's prediction, which a run with
    that wider crop alone gives. One CPU thread: with several, oneDNN's float32 convolutions may round differently
    for the two batch sizes (7e-5 px on a 2-core machine when no earlier test had set one thread)."""
    from prn_blender.core.constants import INFERENCE_ZOOM
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions, hull_weight
    from prn_blender.core.result import CropTransform
    kw = {"device": "cpu"}
    base = {"flip": False, "turns": (0.0,), "recrop": False}
    crop = CropTransform(center=(260.0, 170.0), size=220.0)
    wide = CropTransform(crop.center, crop.size * INFERENCE_ZOOM)          # the shipped model records no zoom
    both = FaceReconstructor(**kw, options=InferenceOptions(**base))(str(astronaut), crop=crop, texture=False)[0]
    inner = FaceReconstructor(**kw, options=InferenceOptions(**base, periphery=False))
    alone = inner(str(astronaut), crop=crop, texture=False)[0]
    outer = inner(str(astronaut), crop=wide, texture=False)[0]
    lay = inner.layout                                    # with the shipped model's calibrated landmark pixels
    w = hull_weight(inner.predictor.layout, lay).reshape(-1)[lay.face_ind]
    assert (w[lay.kpt_vertex] == 1).all() and (w[inner.predictor.layout.kpt_vertex] == 1).all()
    assert (w == 1).sum() > 10000 and (w == 0).sum() > 5000 and ((w > 0) & (w < 1)).sum() > 1000
    np.testing.assert_array_equal(both.landmarks, alone.landmarks)
    np.testing.assert_allclose(both.vertices[w == 1], alone.vertices[w == 1], atol=1e-4)
    np.testing.assert_allclose(both.vertices[w == 0], outer.vertices[w == 0], atol=1e-3)
    mid = (w > 0) & (w < 1)
    np.testing.assert_allclose(both.vertices[mid], (w[mid, None] * alone.vertices[mid]
                                                    + (1 - w[mid, None]) * outer.vertices[mid]), atol=1e-3)
    assert np.abs(alone.vertices[w == 0] - outer.vertices[w == 0]).max() > 1.0   # the two views do differ there


def test_carried_periphery(astronaut):
    """Video's key frames: a result keeps its wide view's map; a later call can carry it instead of running the
    view (a similarity fitted inside the landmarks' hull, exact for a face that moved rigidly); the landmarks and the
    surface inside the hull stay those of the zoomed view, and a view carried onto its own frame is close to it."""
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions, hull_weight
    from prn_blender.core.result import CropTransform
    rec = FaceReconstructor(device="cpu", options=InferenceOptions(flip=False, turns=(0.0,), recrop=False,
                                                                  periphery=False))
    crop = CropTransform(center=(222.0, 132.0), size=121.0)                  # about what the detector gives
    alone = rec(str(astronaut), crop=crop, texture=False)[0]
    key = rec(str(astronaut), crop=crop, texture=False, periphery=True)[0]
    assert alone.wide_view is None and key.wide_view.shape == (256, 256, 3)
    lay = rec.layout
    w = hull_weight(rec.predictor.layout, lay).reshape(-1)[lay.face_ind]
    # the whole face moved rigidly with a change of size: the carried wide view is the moved one
    a = np.radians(12.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) * 0.9
    def move(p):
        return (p.reshape(-1, 3) @ R.T + [15.0, -7.0, 3.0]).reshape(p.shape).astype(np.float32)
    np.testing.assert_allclose(lay.vertices(rec.carry_periphery(key, move(key.position_map))),
                               lay.vertices(move(key.wide_view)), atol=1e-2)
    with pytest.raises(ValueError, match="wide view"):
        rec.carry_periphery(alone, alone.position_map)
    # carried onto its own frame: exactly its wide view outside the hull; landmarks and hull are the zoomed view's
    own = rec(str(astronaut), crop=crop, texture=False, carry=[(key, 1.0)])[0]
    moved_key = dataclasses.replace(key, position_map=move(key.position_map), wide_view=move(key.wide_view))
    half = rec(str(astronaut), crop=crop, texture=False, carry=[(key, 0.5), (moved_key, 0.5)])[0]
    assert own.wide_view is None and half.wide_view is None
    np.testing.assert_allclose(own.vertices, key.vertices, atol=1e-2)
    np.testing.assert_array_equal(half.landmarks, alone.landmarks)
    np.testing.assert_allclose(half.vertices[w == 1], alone.vertices[w == 1], atol=1e-4)
    np.testing.assert_allclose(half.vertices[w == 0], own.vertices[w == 0], atol=1e-2)   # the same view twice
    assert np.abs(alone.vertices[w == 0] - key.vertices[w == 0]).mean() > 1.0          # which is not the zoomed one


def test_flip_tta_symmetric(rec, astronaut):
    """Mirror averaging (the default) makes the landmarks mirror-equivariant: reconstructing the mirrored photo gives
    the mirrored landmarks (iBUG pairs swapped), which a single pass does not."""
    from PIL import Image
    from prn_blender.core.constants import IBUG68_MIRROR
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    assert rec.predictor.options.flip
    img = np.asarray(Image.open(astronaut).convert("RGB"))
    w = img.shape[1]
    box, mbox = (150, 60, 260, 190), (w - 1 - 260, 60, w - 1 - 150, 190)

    def asymmetry(r):
        a = r(img, box=box, texture=False)[0].landmarks[:, :2]
        b = r(np.ascontiguousarray(img[:, ::-1]), box=mbox, texture=False)[0].landmarks[:, :2]
        b = b[list(IBUG68_MIRROR)]
        b[:, 0] = w - 1 - b[:, 0]
        return np.abs(a - b).max()

    single = FaceReconstructor(device="cpu", options=InferenceOptions(flip=False))
    e_flip, e_single = asymmetry(rec), asymmetry(single)
    # measured with the shipped weights: 1.2 px (interpolation, bf16 rounding) vs 20.5 px for the single pass
    assert e_flip < 2.0, e_flip                 # pixels, on a 512 px photo
    assert e_single > 5 * e_flip, (e_single, e_flip)


def test_multi_view_is_the_mean_of_its_views(astronaut):
    """Multi-view averaging (the default for photos: PHOTO_TURNS) gives the mean of what each view alone gives, in
    image pixels, and keeps the unturned crop as the face's crop; scales and turns combine, every scale at every
    turn."""
    from PIL import Image
    from prn_blender.core.constants import PHOTO_TURNS
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    img = np.asarray(Image.open(astronaut).convert("RGB"))
    box = (150, 60, 260, 190)
    rec = FaceReconstructor(device="cpu")
    assert rec.predictor.options.views == tuple((1.0, a) for a in PHOTO_TURNS) and len(PHOTO_TURNS) > 1
    multi = rec(img, box=box, texture=False)[0]
    alone = []
    for a in PHOTO_TURNS:
        rec.predictor.options = InferenceOptions(turns=(a,))
        alone.append(rec(img, box=box, texture=False)[0])
        assert alone[-1].crop.angle == 0.0            # the result's crop is the unturned one
    assert multi.crop == alone[0].crop
    spread = max(np.abs(a.landmarks - alone[0].landmarks).max() for a in alone)
    assert spread > 0.5, spread                # the views disagree, so the mean is not any one of them
    for field in ("landmarks", "vertices"):
        mean = np.mean([getattr(a, field) for a in alone], axis=0)
        np.testing.assert_allclose(getattr(multi, field), mean, atol=0.05, err_msg=field)
    assert InferenceOptions(scales=(0.9, 1.1), turns=(-5.0, 5.0)).views == (
        (0.9, -5.0), (0.9, 5.0), (1.1, -5.0), (1.1, 5.0))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "prn_blender", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_cli_reconstruct_and_info(astronaut, rec, tmp_path):
    p = _cli("reconstruct", str(astronaut), "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    for f in ("astronaut.obj", "astronaut.mtl", "astronaut_texture.png", "astronaut_landmarks.json",
              "astronaut_overlay.png"):
        assert (tmp_path / f).stat().st_size > 0
    js = json.loads((tmp_path / "astronaut_landmarks.json").read_text())
    assert len(js["landmarks68"]) == 68 and js["image_size"] == [512, 512] and "yaw" in js["pose"]
    obj = (tmp_path / "astronaut.obj").read_text().splitlines()
    assert sum(1 for x in obj if x.startswith("v ")) == load_layout().n_vertices
    # the fastest settings: one view, no mirror, the detector's crop as it is -> other landmarks
    p = _cli("reconstruct", str(astronaut), "--one-view", "--no-flip", "--no-recrop", "--out", str(tmp_path / "fast"))
    assert p.returncode == 0, p.stderr
    fast = json.loads((tmp_path / "fast" / "astronaut_landmarks.json").read_text())
    assert np.abs(np.subtract(fast["landmarks68"], js["landmarks68"])).max() > 0.5
    # without the blurred-surround views: the same jaw line (from the sharp views), other inner points
    p = _cli("reconstruct", str(astronaut), "--no-surround-blur", "--out", str(tmp_path / "sharp"))
    assert p.returncode == 0, p.stderr
    sharp = np.array(json.loads((tmp_path / "sharp" / "astronaut_landmarks.json").read_text())["landmarks68"])
    lm = np.array(js["landmarks68"])
    np.testing.assert_array_equal(sharp[:17], lm[:17])
    assert (np.abs(sharp[17:] - lm[17:]).max(1) > 0).all()
    # with the shipped refiner: the same landmarks but those it redraws (read inside its UV windows)
    p = _cli("reconstruct", str(astronaut), "--refine", "--out", str(tmp_path / "refined"))
    assert p.returncode == 0, p.stderr
    raw = np.array(json.loads((tmp_path / "refined" / "astronaut_landmarks.json").read_text())["landmarks68"])
    inside = np.zeros(68, bool)
    from prn_blender.core.refine import DEFAULT_REFINER, Refiner
    for w in Refiner(DEFAULT_REFINER, rec.predictor.layout).windows:
        u, v = rec.layout.kpt_xy.T
        inside |= (u >= w.u0) & (u < w.u1) & (v >= w.v0) & (v < w.v1)
    assert inside[48:].all() and inside.sum() < 30
    np.testing.assert_array_equal(raw[~inside], lm[~inside])
    assert (np.abs(raw[inside] - lm[inside]).max(1) > 0.1).mean() > 0.5
    # a texture of a given side (the astronaut's own is 256 texels: texture_side)
    import cv2
    assert cv2.imread(str(tmp_path / "astronaut_texture.png"), cv2.IMREAD_UNCHANGED).shape[:2] == (256, 256)
    p = _cli("reconstruct", str(astronaut), "--texture-size", "512", "--out", str(tmp_path / "t512"))
    assert p.returncode == 0, p.stderr
    assert cv2.imread(str(tmp_path / "t512" / "astronaut_texture.png"), cv2.IMREAD_UNCHANGED).shape[:2] == (512, 512)
    p = _cli("reconstruct", str(astronaut), "--texture-size", "0", "--out", str(tmp_path / "t0"))
    assert p.returncode == 2 and "--texture-size: 0: give a side of 16 to 8192" in p.stderr
    assert not (tmp_path / "t0").exists()
    p = _cli("info")
    assert p.returncode == 0 and "layout: ict-face-v2" in p.stdout and "parameters:" in p.stdout


def test_cli_errors_are_one_line(tmp_path):
    blank = tmp_path / "blank.png"
    from prn_blender.core.image_io import save_image
    save_image(blank, np.full((200, 200, 3), 0.5, np.float32))
    p = _cli("reconstruct", str(blank), "--out", str(tmp_path / "o"))
    assert p.returncode != 0 and p.stderr.strip().startswith("error: no face")
    p = _cli("reconstruct", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1


def test_cli_reconstructs_many_photos_and_goes_on_past_bad_ones(astronaut, tmp_path, capsys):
    """``reconstruct`` takes photos and folders of photos with one model: a photo that cannot be read or shows no
    face gets one error line and no files, the others are written, exit 2 when any failed; inputs whose outputs
    would share names, a folder without photos and --box for several photos stop it before any work."""
    from prn_blender.__main__ import main
    from prn_blender.core.image_io import save_image
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes(astronaut.read_bytes())
    (photos / "broken.jpg").write_bytes(astronaut.read_bytes()[:3000])
    (photos / "notes.txt").write_text("not a photo")
    blank = tmp_path / "blank.png"
    save_image(blank, np.full((200, 200, 3), 0.5, np.float32))
    fast = ["--one-view", "--no-flip", "--no-recrop", "--out", str(tmp_path / "out")]
    p = _cli("reconstruct", str(blank), str(photos), *fast)
    assert p.returncode == 2, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: {blank}: no face found in the image",
                      (f"error: cannot read image {photos / 'broken.jpg'}: not a decodable image (truncated or "
                       "unsupported format)")], p.stderr
    assert p.stderr.splitlines()[-1] == "1 of 3 photos reconstructed"
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "astronaut.mtl", "astronaut.obj", "astronaut_landmarks.json", "astronaut_overlay.png",
        "astronaut_texture.png"]
    assert p.stdout.split() == [str(tmp_path / "out" / f) for f in (
        "astronaut.obj", "astronaut_landmarks.json", "astronaut_overlay.png")]
    # stopped before any work: one line, exit 2, nothing written
    (tmp_path / "other").mkdir()
    save_image(tmp_path / "other" / "astronaut.jpg", np.zeros((8, 8, 3), np.float32))
    (tmp_path / "empty").mkdir()
    twin = tmp_path / "other" / "astronaut.jpg"
    for args, msg in (([photos, tmp_path / "other"], f"{photos / 'astronaut.png'} and {twin} would both write"),
                      ([tmp_path / "empty"], f"{tmp_path / 'empty'}: no photos (.jpg,"),
                      ([blank, astronaut, "--box", "0", "0", "9", "9"], "--box gives the face of one photo, not of 2")):
        assert main(["reconstruct", *map(str, args), "--out", str(tmp_path / "none")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: " + msg), err
        assert not (tmp_path / "none").exists()


def test_demo_rejects_bad_input_with_one_line(tmp_path, astronaut):
    """README command 1 with a truncated or missing photo: exit 2, one 'error:' line on stderr, nothing written."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(astronaut.read_bytes()[:3000])
    out = tmp_path / "out"
    for path in (bad, tmp_path / "missing.jpg"):
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools/demo.py"), str(path), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("[ WARN")]   # OpenCV's decoder warning
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot read image"), r.stderr
        assert not any(out.iterdir())


def test_cpu_autocast_only_where_the_cpu_runs_bf16(monkeypatch):
    """On a CPU, InferenceOptions.amp runs bf16 autocast only where cpu_bf16() says the CPU computes it natively
    (emulated bf16 made the network ~30x slower on an AVX2-only CPU); elsewhere the output is float32's, exactly."""
    from prn_blender.core import network
    from prn_blender.core import reconstruct as R
    assert R.cpu_bf16 is network.cpu_bf16 and isinstance(network.cpu_bf16(), bool)
    x = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    fp32 = R.PRNPredictor(device="cpu", options=R.InferenceOptions(amp=False))(x)
    amp = R.PRNPredictor(device="cpu", options=R.InferenceOptions(amp=True))
    monkeypatch.setattr(R, "cpu_bf16", lambda: False)
    np.testing.assert_array_equal(amp(x), fp32)
    monkeypatch.setattr(R, "cpu_bf16", lambda: True)
    assert np.abs(amp(x) - fp32).max() > 1e-4
