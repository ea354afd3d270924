"""Data engine and training (need ICT-FaceKit from ../shared)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.shared
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def engine(shared):
    from prn_blender.synth.ict import load_ict
    from prn_blender.synth.render import FaceRenderer
    ict = load_ict()
    return ict, FaceRenderer(ict)


def test_layout_asset_rebuilds_identically(engine):
    from prn_blender.core.layout import load_layout
    from prn_blender.synth.uvmap import build_ict_layout
    ict, _ = engine
    built, asset = build_ict_layout(ict), load_layout("ict-face-v2")
    assert np.array_equal(built.mask, asset.mask) and np.array_equal(built.triangles, asset.triangles)
    assert np.array_equal(built.kpt_xy, asset.kpt_xy) and np.allclose(built.canonical, asset.canonical)


@pytest.mark.shared
def test_layout_landmarks_follow_the_3d_annotation_convention(shared):
    """ict-face-v2's landmarks are PRNet's mean-BFM landmarks moved onto the ICT surface. Fitting the ICT model
    with them to AFLW2000-3D ground truth (evaluation images excluded) leaves 1.94 % NME on all 1,984 shapes; ICT's
    own landmark vertices (layout v1) left 4.01 %."""
    from prn_blender.core.layout import load_layout
    from prn_blender.evaluate.convention import annotation_shapes, landmark_floor
    shapes, yaw = annotation_shapes(shared, every=40)
    assert len(shapes) == 50 and not np.isnan(shapes).any()
    e = landmark_floor(load_layout("ict-face-v2"), shapes, shared)
    assert e.mean() < 2.5 and e[yaw > 60].mean() < 3.0


def test_render_ground_truth_consistent(engine):
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    g = torch.Generator().manual_seed(3)
    p = sample_params(6, ict.expression_names, g)
    b = r.render(p)
    assert b.image.shape == (6, 3, 256, 256) and b.pos.shape == (6, 3, 256, 256)
    # landmarks read from the position map are the layout's landmark surface points, projected the same way
    verts = r.shapes(p["identity"], p["expression"])
    img_v, _ = r.project(verts, p["yaw"], p["pitch"], p["roll"], p["persp_dist"])
    true = (img_v[:, r.lm_vids, :2] * r.lm_bary[..., None]).sum(-2)
    assert float((b.kpt[..., :2] - true).norm(dim=-1).max()) < 1e-3
    # crop convention: 68-point box x 1.6 fills the 256 crop, centred
    lo, hi = true.min(1).values, true.max(1).values
    assert torch.allclose((hi - lo).sum(-1) / 2 * 1.6, torch.full((6,), 256.0), atol=1e-3)
    assert torch.allclose((lo + hi) / 2, torch.full((6, 2), 128.0), atol=1e-3)
    # z channel shifted to min 0 over the face, non-negative everywhere
    face = b.pos[:, 2][:, torch.from_numpy(r.layout.mask)]
    assert torch.allclose(face.min(1).values, torch.zeros(6), atol=1e-4)
    assert b.visibility.any() and b.visibility.float().mean() < 0.5


def test_rendered_head_has_no_cracks(engine):
    """Polygons on the seams between ICT parts (face/head, lips/mouth) are drawn: the head layer has almost no
    uncovered pixels inside its own silhouette (the seam dropped made a 2-3 px crack, >= 0.5 % of the area), also
    with the neck turned towards a torso (sampler.sample_body)."""
    import torch.nn.functional as F

    from prn_blender.synth.render import CANVAS_MARGIN as m
    from prn_blender.synth.sampler import sample_body, sample_params
    ict, r = engine
    p = sample_params(4, ict.expression_names, torch.Generator().manual_seed(1))
    p["identity"].zero_()
    p["expression"].zero_()
    for k in ("yaw", "pitch", "roll"):
        p[k].zero_()
    p["yaw"][1], p["yaw"][2], p["pitch"][3] = 0.6, -1.2, 0.4
    b = r.render(_bare(p))
    # and with a torso facing the camera (sample_body): the neck turned all the way back from the head's yaw
    body = sample_body(4, torch.Generator().manual_seed(2))
    body["body_yaw"].zero_()
    for scene in (b, r.render({**p, **body})):
        alpha = scene.layer[:, 3:, m:-m, m:-m]
        closed = -F.max_pool2d(-F.max_pool2d(alpha, 7, 1, 3), 7, 1, 3)
        cracks = ((closed > 0) & (alpha == 0)).sum((1, 2, 3)).float()
        assert torch.all(cracks < 0.0025 * alpha.sum((1, 2, 3))), cracks
    # the crop image is exactly the layer's centre composited over the background
    crop = b.layer[:, :, m:-m, m:-m]
    assert torch.allclose(b.image, (crop[:, :3] + (1 - crop[:, 3:]) * b.background).clamp(0, 1))


def _bare(p):
    """Scene parameters without hair volume, fringe, locks or glasses."""
    p["hair_vol"].zero_()
    p["locks"].zero_()
    p["glasses"].zero_()
    p["bangs"].fill_(9.0)
    return p


def test_hair_and_glasses_cover_the_head_but_not_the_ground_truth(engine):
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    p = _bare(sample_params(2, ict.expression_names, torch.Generator().manual_seed(5)))
    for k in ("yaw", "pitch", "roll"):
        p[k].zero_()
    bare = r.render(p)
    p["hair_vol"].fill_(0.2)
    p["hair_len"].fill_(1.5)
    p["bangs"].fill_(0.1)
    p["glasses"].fill_(1.0)
    p["sunglasses"].fill_(1.0)
    dressed = r.render(p)
    assert torch.equal(bare.pos, dressed.pos) and torch.equal(bare.kpt, dressed.kpt)
    # volume: hair covers canvas pixels beyond the bald silhouette, and never uncovers any
    a0, a1 = bare.layer[:, 3], dressed.layer[:, 3]
    assert torch.all(a1 >= a0 - 1e-6) and torch.all((a1 > 0.5).sum((1, 2)) > (a0 > 0.5).sum((1, 2)) * 1.1)
    k = bare.kpt[..., :2]
    up = k[:, 17:27].mean(1) - k[:, 8]
    for i in range(2):
        # fringe: the forehead above the brows shows the hair colour: coverage a in [0.8, 1] of hair x 0.55-1.15
        # strand shading over the bare forehead
        fx, fy = (k[i, 17:27].mean(0) + 0.3 * up[i]).round().long().tolist()
        hair, under = p["hair"][i].clamp_min(1e-3), bare.image[i, :, fy, fx]
        lo, hi = 0.8 * 0.55 * hair, 1.15 * hair + 0.2 * under
        pix = dressed.image[i, :, fy, fx]
        assert torch.all((pix > lo - 1e-4) & (pix < hi + 1e-4)) and not torch.allclose(pix, under), (pix, lo, hi)
        # dark lenses over both eyes: at most 0.9 * 0.25 + 0.1 * 1
        for a, b in ((36, 42), (42, 48)):
            ex, ey = k[i, a:b].mean(0).round().long().tolist()
            assert float(dressed.image[i, :, ey, ex].max()) <= 0.33


def test_profile_glasses_show_the_near_lens_only_and_only_in_training_scenes(engine, monkeypatch):
    """Beyond GLASSES_MAX_YAW a training scene (``yaw_aware``) wears dark glasses over the near eye and drops the
    far lens (hidden behind the nose); scenes without the flag (the held-out benchmark's) are drawn bare."""
    from prn_blender.synth import accessories
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    p = _bare(sample_params(2, ict.expression_names, torch.Generator().manual_seed(5)))
    p["yaw"][:] = torch.tensor([70.0, -70.0]) * math.pi / 180
    p["pitch"].zero_()
    p["roll"].zero_()
    bare = r.render(p)
    p["glasses"].fill_(1.0)
    p["sunglasses"].fill_(1.0)
    assert torch.equal(r.render(p).layer, bare.layer)
    p["yaw_aware"] = torch.ones(2, dtype=torch.bool)
    dressed = r.render(p)
    assert torch.equal(bare.pos, dressed.pos) and torch.equal(bare.kpt, dressed.kpt)
    monkeypatch.setattr(accessories, "GLASSES_MAX_YAW", 2.0)        # both lenses drawn at this yaw
    both = r.render(p)

    def lens(b):           # pixels the glasses darkened to a dark-lens colour
        return (b.image.amax(1) <= 0.33) & (b.image != bare.image).any(1)
    for i in range(2):
        k = bare.kpt[i, :, :2]
        nose_right = float(k[30, 0] - (k[0, 0] + k[16, 0]) / 2) > 0      # the nose points to image-right
        ex, ey = k[36:42].mean(0).round().long().tolist() if nose_right else k[42:48].mean(0).round().long().tolist()
        assert float(dressed.image[i, :, ey, ex].max()) <= 0.33                  # the near eye is behind a dark lens
        one, two = lens(dressed)[i], lens(both)[i]
        assert bool((one & ~two).sum() <= 0.02 * one.sum()) and int(two.sum()) > int(one.sum()) * 1.3


def test_yaw_aware_scenes_drop_the_lock_over_the_face_from_the_hidden_jaw_end(engine):
    """Beyond LOCK_HIDDEN_YAW a yaw-aware scene draws exactly what the same scene draws with the lock on the nose's side
    (whose jaw end is behind the face) removed; the lock on the visible side still shows."""
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    p = _bare(sample_params(2, ict.expression_names, torch.Generator().manual_seed(5)))
    p["yaw"][:] = torch.tensor([60.0, -60.0]) * math.pi / 180
    p["hair_len"].fill_(1.5)
    p["hair_vol"].fill_(0.1)
    p["locks"].fill_(0.1)
    bare = r.render({**p, "locks": torch.zeros(2, 2)})
    aware = r.render({**p, "yaw_aware": torch.ones(2, dtype=torch.bool)})
    for i in range(2):
        k = bare.kpt[i, :, :2]
        hidden = 1 if float(k[30, 0] - (k[0, 0] + k[16, 0]) / 2) > 0 else 0    # the nose points to that side
        one = p["locks"].clone()
        one[:, hidden] = 0
        ref = r.render({**p, "locks": one})
        assert torch.equal(aware.layer[i], ref.layer[i])
        assert not torch.equal(aware.layer[i], bare.layer[i])
    assert not torch.equal(r.render(p).layer, aware.layer)


def test_environment_lighting(engine):
    """sh = 0 renders exactly as without; random sh changes the shading."""
    from prn_blender.synth.sampler import sample_lighting, sample_params
    ict, r = engine
    p = sample_params(4, ict.expression_names, torch.Generator().manual_seed(5))
    base = r.render(p)
    assert torch.equal(r.render({**p, "sh": torch.zeros(4, 8, 3)}).image, base.image)
    sh = sample_lighting(4, torch.Generator().manual_seed(6), prob=1.0)
    lit = r.render({**p, **sh})
    assert sh["sh"].shape == (4, 8, 3) and float((lit.image - base.image).abs().mean()) > 0.005


def test_render_is_deterministic(engine):
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    outs = [r.render(sample_params(3, ict.expression_names, torch.Generator().manual_seed(11))) for _ in range(2)]
    assert torch.equal(outs[0].image, outs[1].image) and torch.equal(outs[0].pos, outs[1].pos)


def test_training_batches_are_made_on_the_data_device(shared):
    """On a GPU the training stream must render, augment and degrade on the GPU: every tensor the data path
    creates is placed on the data's device (scene parameters explicitly on the CPU), and image randomness comes
    from the stream's image generator. Checked without a GPU by making 'meta' the default device: a factory call
    that names no device would make a meta tensor, and mixing it with the CPU data raises. With the image
    generator split off (as on CUDA) the scenes stay the same, the images change, and the scene generator draws
    nothing else. (Draws from a generator are placed on its device by sampler._rand & co.)"""
    from prn_blender.train.data import SyntheticStream
    a, b = (SyntheticStream(2, seed=4) for _ in range(2))
    b.gi = torch.Generator().manual_seed(123)
    torch.set_default_device("meta")
    try:
        (img_a, pos_a), (img_b, pos_b) = next(a), next(b)
        rendered = a._cache, b._cache
        next(a), next(b)                                   # and a second, fresh batch
    finally:
        torch.set_default_device(None)
    assert img_a.device.type == pos_a.device.type == img_b.device.type == "cpu" and torch.isfinite(img_a).all()
    assert torch.equal(rendered[0].pos, rendered[1].pos)                     # same scenes (CPU generator)
    assert not torch.equal(rendered[0].background, rendered[1].background)   # images from the image generator
    assert not torch.equal(img_a, img_b) and not torch.equal(pos_a, pos_b)  # and so is the augmentation
    c = SyntheticStream(2, seed=4)
    c.gi = torch.Generator().manual_seed(123)
    c.render(), c.render()
    assert torch.equal(b.g.get_state(), c.g.get_state())     # the scene generator drew the scenes and nothing else


def test_scene_features_switch_off_one_at_a_time(shared, monkeypatch):
    """train.py --without: each feature generators 7-10 added to the training scenes is skipped when named, and only
    that one; the generator name records what was off."""
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.train import data
    step_of = {"exposure": "expose", "sh": "sample_lighting", "distract": "distract", "yaw-aware": "yaw_aware"}
    assert set(step_of) == set(data.SCENE_FEATURES)
    calls = []

    def spy(name):
        fn = getattr(data, name)
        return lambda *a, **k: (calls.append(name), fn(*a, **k))[1]

    for name in ("expose", "sample_lighting", "distract"):
        monkeypatch.setattr(data, name, spy(name))
    s = data.SyntheticStream(2, seed=1, density=20)
    render = s.renderer.render

    def seen(p):
        if "yaw_aware" in p and p["yaw_aware"].all():
            calls.append("yaw_aware")
        return render(p)
    s.renderer.render = seen
    for off in [(), *[(f,) for f in step_of]]:
        s.without, s._left = frozenset(off), 0            # a fresh batch with these features off
        calls.clear()
        img, pos = next(s)
        assert img.shape == pos.shape == (2, 3, 256, 256)
        assert set(calls) == set(step_of.values()) - {step_of[f] for f in off}, off
    assert data.generator_name() == GENERATOR_VERSION
    assert data.generator_name(["sh", "exposure"]) == f"{GENERATOR_VERSION} without exposure+sh"
    with pytest.raises(ValueError, match="unknown scene features"):
        data.generator_name(["hair"])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the device tool's machine); CI has none"))])
def test_render_batches_serve_one_render_batch_by_batch(shared, device):
    """train.py --render-batches K: the stream renders K batches' scenes at once and serves them batch by batch,
    each served 1 + reuse times with fresh augmentation; the scenes are those of one render of K batches."""
    from prn_blender.train.data import SyntheticStream
    kw = {"seed": 5, "reuse": 1, "density": 20, "device": device, "render_batches": 2}
    bare = SyntheticStream(2, augment_on=False, **kw)
    want = SyntheticStream(2, **kw).render(4)                       # the same seed's first render, of 2 x 2 scenes
    got = [next(bare) for _ in range(5)]
    assert [tuple(i.shape) for i, _ in got] == [(2, 3, 256, 256)] * 5 and got[0][0].device.type == device
    def same(x, y):   # on a GPU, atomics may order float sums differently: the same up to a few pixels
        return torch.equal(x, y) if device == "cpu" else ((x - y).abs() > 1e-3).float().mean() < 1e-3

    for k, (img, pos) in enumerate(got[:4]):                        # batches 1, 2, then both again (reuse 1)
        assert same(img, want.image[2 * (k % 2):2 * (k % 2) + 2])
        assert same(pos, want.pos[2 * (k % 2):2 * (k % 2) + 2])
    assert not torch.equal(got[4][1], want.pos[:2])                  # then a new render
    dressed = SyntheticStream(2, context_blur=0.5, **kw)
    a, b, c = (next(dressed) for _ in range(3))                       # re-augmented on its second serving
    assert a[0].shape == (2, 3, 256, 256) and not torch.equal(a[1], c[1]) and not torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="render_batches 0"):
        SyntheticStream(2, seed=5, render_batches=0)


def _train_cmd(out, *extra):
    return [sys.executable, os.path.join(REPO, "train.py"), "--out", str(out), "--width", "2", "--batch", "2",
            "--steps", "2", "--save-every", "1", "--threads", "1", "--no-progress", *extra]


def _train(out, *extra):
    subprocess.run(_train_cmd(out, *extra), check=True, cwd=REPO, capture_output=True, timeout=600)
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_training_deterministic_and_resumable(tmp_path):
    a = _train(tmp_path / "a", "--keep-every", "1")
    b = _train(tmp_path / "b")                                    # the same run again
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert (tmp_path / "a/weights.safetensors").exists() and (tmp_path / "a/checkpoint.pt").exists()
    c = _train(tmp_path / "a", "--steps", "3", "--resume", "--keep-every", "1")
    assert [r["step"] for r in c] == [1, 2, 3]
    from prn_blender.core.weights import load_model
    model, lay, md = load_model(tmp_path / "a/weights.safetensors")
    assert md["meta"]["steps"] == 3 and lay.name == "ict-face-v2" and model.width == 2
    snaps = sorted(p.name for p in (tmp_path / "a/snapshots").iterdir())
    assert snaps == [f"weights_00000{i}.safetensors" for i in (1, 2, 3)]

    # ship the mean of the snapshots of steps 2-3: every weight is their average, BatchNorm is recalibrated
    out = tmp_path / "avg.safetensors"
    subprocess.run([sys.executable, "-m", "prn_blender.train.ship", "--run", str(tmp_path / "a"), "--average-from",
                    "2", "--bn-batches", "1", "--out-weights", str(out)], check=True, cwd=REPO, capture_output=True,
                   timeout=600)
    avg, _, md = load_model(out)
    m2, m3 = (load_model(tmp_path / f"a/snapshots/weights_00000{i}.safetensors")[0] for i in (2, 3))
    assert md["meta"]["averaged"] == "mean of 2 snapshots, steps 2-3 (every 1)" and md["meta"]["steps"] == 3
    assert md["meta"]["average_from"] == 2 and md["meta"]["average_every"] == 1
    sd2, sd3 = m2.state_dict(), m3.state_dict()
    moved = 0
    for k, v in avg.state_dict().items():
        if "running_" in k or k.endswith("num_batches_tracked"):
            continue
        assert torch.allclose(v, (sd2[k] + sd3[k]) / 2, atol=2e-3, rtol=2e-3), k
        moved += int(not torch.equal(sd2[k], sd3[k]))
    assert moved > 0                                                 # the two snapshots differ
    bn = [k for k in sd3 if k.endswith("running_mean")]
    assert any(not torch.allclose(avg.state_dict()[k], sd3[k]) for k in bn)   # statistics were recomputed

    # fine-tuning (--init) starts from those weights and records them as the parent, through a resume too;
    # the card line names the parent and what it was trained with
    from prn_blender.core.weights import sha256
    from prn_blender.train.ship import _lineage
    _train(tmp_path / "f", "--init", str(out), "--steps", "1")
    f1 = load_model(tmp_path / "f/weights.safetensors")[2]["meta"]["parent"]
    _train(tmp_path / "f", "--steps", "2", "--resume")
    ft, _, md = load_model(tmp_path / "f/weights.safetensors")
    parent = md["meta"]["parent"]
    assert parent == f1 and md["meta"]["steps"] == 2
    assert parent["sha256"] == sha256(out) and parent["steps"] == 3 and parent["images_seen"] == 6
    assert parent["averaged"] == "mean of 2 snapshots, steps 2-3 (every 1)"
    line = _lineage(parent)
    assert line.startswith(f"`avg.safetensors` sha256 `{sha256(out)[:12]}...`: 3 steps, 6 images") and "paper" in line
    assert any(not torch.equal(v, avg.state_dict()[k]) for k, v in ft.state_dict().items())   # it trained
    # a resumed run keeps its width: none given is its own (resumed above), another one is refused
    cmd = _train_cmd(tmp_path / "f", "--steps", "3", "--resume")
    i = cmd.index("--width")
    p = subprocess.run(cmd[:i + 1] + ["4"] + cmd[i + 2:], check=False, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode != 0 and "--width 4: this run has width 2; leave --width out to keep it\n" in p.stderr
    assert len((tmp_path / "f/log.jsonl").read_text().splitlines()) == 2                       # nothing trained


def test_max_time_stops_and_saves(tmp_path):
    """--max-time without --steps: the time box alone bounds the run, which stops at the first step that ends past
    the limit with the checkpoint, the weights and a snapshot of that step written (a time-boxed GPU lease keeps
    what it trained)."""
    cmd = _train_cmd(tmp_path / "t", "--max-time", "0.001", "--keep-every", "1000", "--save-every", "500")
    i = cmd.index("--steps")
    cmd = [c for c in cmd[:i] + cmd[i + 2:] if c != "--no-progress"]   # no --steps: a time-boxed bar
    run = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "1/1 [" in run.stderr and "loss=" in run.stderr     # the bar's total: the step the deadline came at
    log = [json.loads(x) for x in (tmp_path / "t/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]
    from prn_blender.core.weights import load_model
    meta = load_model(tmp_path / "t/weights.safetensors")[2]["meta"]
    assert meta["steps"] == 1 and meta["max_time"] == 0.001                    # recorded for the card
    assert [p.name for p in (tmp_path / "t/snapshots").iterdir()] == ["weights_000001.safetensors"]
    state = torch.load(tmp_path / "t/checkpoint.pt", weights_only=False)
    assert state["step"] == 1 and state["args"]["steps"] is None                   # the time box alone bounds it


def test_warmup_ramps_the_learning_rate(tmp_path):
    """--warmup N: lr/N, 2 lr/N, ... lr over the first N steps, then the schedule; recorded in the weights."""
    log = _train(tmp_path / "w", "--steps", "4", "--lr", "0.001", "--warmup", "3")
    assert [r["lr"] for r in log] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    from prn_blender.core.weights import load_model
    meta = load_model(tmp_path / "w/weights.safetensors")[2]["meta"]
    assert meta["warmup"] == 3 and "loss" not in meta          # the default loss (mse) is not recorded


def test_learning_rate_schedules(tmp_path):
    """--schedule halve: lr halves every --halve-every epochs; cosine: lr (1 + cos(pi p)) / 2 for the share p of
    the run done, by steps or by --max-time, whichever is further; both under the warm-up. A cosine run records its
    schedule in the weights, and its last step trains at lr (1 + cos(pi (steps-1)/steps)) / 2."""
    from prn_blender.train.loop import learning_rate, parse_args
    a = parse_args(["--out", "x", "--lr", "1", "--epoch-size", "10", "--halve-every", "2"])
    assert [learning_rate(a, 0, n, 0.0) for n in (0, 19, 20, 45)] == [1, 1, 0.5, 0.25]
    c = parse_args(["--out", "x", "--lr", "1", "--schedule", "cosine", "--steps", "100", "--warmup", "10"])
    assert learning_rate(c, 0, 0, 0.0) == pytest.approx(0.1 * (1 + math.cos(0)) / 2)        # warm-up x cosine
    assert [learning_rate(c, s, 0, 0.0) for s in (50, 100, 150)] == pytest.approx([0.5, 0, 0])
    t = parse_args(["--out", "x", "--lr", "1", "--schedule", "cosine", "--max-time", "60"])
    assert t.steps is None and learning_rate(t, 5, 0, 15.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    t.steps = 10                                          # both bound it: the one further along counts
    assert learning_rate(t, 5, 0, 15.0) == pytest.approx(0.5)
    log = _train(tmp_path / "c", "--steps", "4", "--lr", "0.001", "--schedule", "cosine")
    assert [r["lr"] for r in log] == pytest.approx([1e-3 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)])
    from prn_blender.core.weights import load_model
    assert load_model(tmp_path / "c/weights.safetensors")[2]["meta"]["schedule"] == "cosine"


def test_weighted_losses():
    """--loss mse: mean over pixels of weight x squared 3D error; --loss euclid: weight x the 3D distance, with a
    finite gradient where the error is zero. Recorded in the weights only when not the default."""
    from prn_blender.train.loop import weighted_loss
    target = torch.zeros(1, 3, 2, 2)
    pred = target.clone()
    pred[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])          # one pixel 5 away, three exact
    pred[0, 2, 1, 1] = 1.0                                     # one pixel 1 away
    weight = torch.tensor([[2.0, 1.0], [1.0, 0.5]])
    assert weighted_loss(pred, target, weight).item() == pytest.approx((2 * 25 + 0.5 * 1) / 4)
    assert weighted_loss(pred, target, weight, "euclid").item() == pytest.approx((2 * 5 + 0.5 * 1) / 4, abs=1e-4)
    p = pred.clone().requires_grad_()
    weighted_loss(p, target, weight, "euclid").backward()
    assert torch.isfinite(p.grad).all()
    # the gradient of a distance is the unit direction x weight / n: the far pixel pulls no harder than the near one
    assert p.grad[0, :, 0, 0].tolist() == pytest.approx([2 * 0.6 / 4, 2 * 0.8 / 4, 0.0], rel=1e-5)
    assert p.grad[0, 2, 1, 1].item() == pytest.approx(0.5 / 4, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        weighted_loss(pred, target, weight, "l1")


def test_lid_loss_weighs_the_eyes_opening_only():
    """lid_loss: mean over the batch and the four lid pairs of the squared error of the upper-to-lower lid vector.
    A whole-map offset costs nothing (pose is the main loss's), lids drawn open on a shut eye cost their gap, and
    its gradient reaches only the eight lid landmark pixels."""
    from prn_blender.core.constants import LID_PAIRS
    from prn_blender.core.layout import load_layout
    from prn_blender.synth.uvmap import LAYOUT_NAME
    from prn_blender.train.loop import lid_loss
    kpt = torch.from_numpy(load_layout(LAYOUT_NAME).kpt_xy.astype("int64"))
    target = torch.randn(2, 3, 256, 256)
    assert lid_loss(target + 5.0, target, kpt).item() == pytest.approx(0.0, abs=1e-9)
    pred = target.clone()
    x, y = kpt[LID_PAIRS[0][0]].tolist()
    pred[0, 1, y, x] -= 3.0                          # face 0: one upper lid 3 units higher than the truth
    assert lid_loss(pred, target, kpt).item() == pytest.approx(9.0 / 8)
    p = pred.clone().requires_grad_()
    lid_loss(p, target, kpt).backward()
    lids = {tuple(kpt[i].tolist()) for pair in LID_PAIRS for i in pair}
    touched = {(int(c), int(r)) for r, c in zip(*torch.nonzero(p.grad.abs().sum((0, 1))).T)}
    assert touched == {(x, y), tuple(kpt[LID_PAIRS[0][1]].tolist())} and touched <= lids


def test_lid_weight_trains_and_is_recorded(tmp_path):
    """The same first step (same seed, data and start) with the term costs more: the term is in the loss."""
    log = _train(tmp_path / "l", "--steps", "1", "--lid-weight", "2")
    plain = _train(tmp_path / "m", "--steps", "1")
    assert math.isfinite(log[0]["loss"]) and log[0]["loss"] > plain[0]["loss"]
    from prn_blender.core.weights import load_model
    assert load_model(tmp_path / "l/weights.safetensors")[2]["meta"]["lid_weight"] == 2
    # a resume cannot drop or change the term (the weights would misreport it)
    p = subprocess.run(_train_cmd(tmp_path / "l", "--steps", "2", "--resume"), check=False, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "this run trained with --lid-weight 2.0" in p.stderr
    p = subprocess.run(_train_cmd(tmp_path / "n", "--lid-weight", "-1"), check=False, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "--lid-weight -1" in p.stderr and not (tmp_path / "n").exists()


def test_euclid_loss_trains_and_is_recorded(tmp_path):
    log = _train(tmp_path / "e", "--steps", "2", "--loss", "euclid")
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    from prn_blender.core.weights import load_model
    assert load_model(tmp_path / "e/weights.safetensors")[2]["meta"]["loss"] == "euclid"
    # a resume cannot switch the loss (the weights would misreport it)
    p = subprocess.run(_train_cmd(tmp_path / "e", "--steps", "3", "--resume"), check=False, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "this run trained with --loss euclid" in p.stderr
    assert len((tmp_path / "e/log.jsonl").read_text().splitlines()) == 2          # nothing trained


def test_without_is_recorded_and_checked(tmp_path):
    _train(tmp_path / "w", "--without", "exposure,sh")
    from prn_blender.core.weights import load_model
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.train import data
    meta = load_model(tmp_path / "w/weights.safetensors")[2]["meta"]
    assert meta["generator"] == f"{GENERATOR_VERSION} without exposure+sh"
    assert meta["preset_history"] == f"paper ({GENERATOR_VERSION} without exposure+sh) from step 0"
    assert data.without_of(meta["generator"]) == ["exposure", "sh"] and data.without_of(GENERATOR_VERSION) == []
    assert data.without_of("ictsynth-10 without restyle+sh") == ["sh"]      # restyle is gone from the generator
    # BatchNorm recalibration (train.ship) draws the run's own scenes
    s = data.run_stream({**meta, "yaw_uniform": 0.8}, 2, 0)
    assert s.without == {"exposure", "sh"} and s.yaw_uniform == 0.8
    assert data.run_stream({"generator": GENERATOR_VERSION}, 2, 0).without == set()
    p = subprocess.run(_train_cmd(tmp_path / "x", "--without", "hair"), check=False, cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0 and "--without: unknown scene features ['hair']" in p.stderr
    assert not (tmp_path / "x").exists()                                  # refused before anything is written
    p = subprocess.run(_train_cmd(tmp_path / "k", "--keep-every", "3", "--save-every", "2"), check=False, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "--keep-every 3 is not a multiple of --save-every 2" in p.stderr
    assert not (tmp_path / "k").exists()


def test_context_blur_scenes_are_the_same_scenes_with_a_blurred_surround(shared):
    """--context-blur: the blur has a generator of its own, so a run with it trains on the scenes of the run
    without it; the chosen samples differ outside the face only, and the generator name records the share."""
    from prn_blender.core.context import context_mask
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.train import data
    plain = data.SyntheticStream(4, seed=1, density=20)
    blurred = data.SyntheticStream(4, seed=1, density=20, context_blur=1.0)
    for _ in range(2):
        (a, pa), (b, pb) = next(plain), next(blurred)
        assert torch.equal(pa, pb)
        kpt = torch.from_numpy(plain.renderer.layout.kpt_xy).long()
        face = context_mask(pa[:, :2, kpt[:, 1], kpt[:, 0]].transpose(1, 2), torch.full((4,), 1.1)).bool()
        face = face.expand_as(a)
        assert torch.equal(a[face], b[face]) and bool((a != b).flatten(1).any(1).all())
    name = data.generator_name(["sh"], 0.5)
    assert name == f"{GENERATOR_VERSION} without sh with context-blur 0.5"
    assert data.without_of(name) == ["sh"] and data.context_blur_of(name) == 0.5
    assert data.context_blur_of(GENERATOR_VERSION) == 0.0
    assert data.run_stream({"generator": name}, 2, 0).context_blur == 0.5
    with pytest.raises(ValueError, match="a probability"):
        data.generator_name((), 1.5)


def test_freeze_bn_keeps_the_running_statistics(tmp_path):
    """--freeze-bn: BatchNorm normalizes with and keeps its running statistics while everything else trains; the
    weights record it. Without it the statistics move."""
    from prn_blender.core.weights import load_model
    _train(tmp_path / "f", "--freeze-bn", "--context-blur", "0.5", "--detail", "--photo-backgrounds", "0.5",
           "--jpeg", "0.5", "--body", "0.5", "--shadows", "0.5")
    _train(tmp_path / "t")
    frozen, _, md = load_model(tmp_path / "f/weights.safetensors")
    moved = load_model(tmp_path / "t/weights.safetensors")[0]
    bns = [m for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
               and torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    assert not all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
                   for m in moved.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(bool(m.bias.abs().max() > 0) for m in bns) > len(bns) // 2      # the affine weights trained
    assert md["meta"]["bn_frozen"] is True
    assert md["meta"]["generator"].endswith(
        "with detail with photo-backgrounds 0.5 with context-blur 0.5 with jpeg 0.5 with body 0.5 with shadows 0.5")
    for flag in ("--context-blur", "--photo-backgrounds", "--jpeg", "--body", "--shadows"):
        p = subprocess.run(_train_cmd(tmp_path / "x", flag, "2"), check=False, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode != 0 and f"{flag} 2.0: give a probability in [0, 1]" in p.stderr
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29631",
           os.path.join(REPO, "train.py"), "--out", str(tmp_path), "--width", "2", "--batch", "2", "--steps", "2",
           "--save-every", "2", "--threads", "1", "--no-progress"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["samples"] == 8          # 2 steps x batch 2 x world 2
    # --max-time: the ranks agree on the step to stop at (else one would wait forever in the next all-reduce),
    # at the first agreement (every LOG_EVERY steps) past the deadline
    cmd = [*cmd[:6], "29632", os.path.join(REPO, "train.py"), "--out", str(tmp_path / "t"), "--width", "2",
           "--batch", "2", "--steps", "50", "--max-time", "0.001", "--save-every", "10", "--threads", "1",
           "--no-progress"]                   # another port: the first run's may not be free yet
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    log = [json.loads(x) for x in (tmp_path / "t/log.jsonl").read_text().splitlines()]
    from prn_blender.train.loop import LOG_EVERY
    assert [r["step"] for r in log] == list(range(1, LOG_EVERY + 1)) and log[-1]["samples"] == 4 * LOG_EVERY


@pytest.mark.slow
def test_gpu_session_script_dry_run_on_the_cpu(tmp_path, shared):
    """tools/gpu_train.sh is the one prepared call for a time-boxed GPU lease: its glue (time-boxed training of the
    shipped model, averaging of the last quarter's snapshots, BN recalibration, parts of at most 15 MB) runs here
    on the CPU, and the parts reassemble into the averaged candidate; a narrower INIT is widened first."""
    from prn_blender.core.weights import DEFAULT_WEIGHTS, load_model, read_metadata, save_weights, sha256

    def run(out, **kw):
        env = {**os.environ, "DEVICE": "cpu", "BATCH": "2", "TRAIN_S": "8", "KEEP": "1", "BENCH": "0",
               "BN_BATCHES": "1", "EVAL_N": "2", "PY": sys.executable, "OUT": str(out),
               "PRN_BLENDER_SHARED": str(shared), **kw}
        subprocess.run(["bash", os.path.join(REPO, "tools/gpu_train.sh")], check=True, env=env, cwd=REPO,
                       capture_output=True, timeout=900)
        parts = sorted(out.glob("cand.part-*"))
        assert parts and all(p.stat().st_size <= 15 * 2 ** 20 for p in parts)
        (out / "cand.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
        return (*load_model(out / "cand.safetensors"), parts)

    W = int(read_metadata(DEFAULT_WEIGHTS)["width"])
    # a continuation of the shipped model, 20 s. How many steps fit depends on what else the 2 cores run (alone
    # several; 1 in two fresh-clone CI runs beside two training jobs), so the test asks for the glue, not a count
    model, _, md, parts = run(tmp_path / "out", WIDTH=str(W), TRAIN_S="20")
    assert len(parts) >= 2 or W < 16                                 # a full-width model comes back in parts
    steps = [json.loads(x)["step"] for x in (tmp_path / "out/train_log.jsonl").read_text().splitlines()]
    assert model.width == W and md["meta"]["steps"] == steps[-1] >= 1
    parent = md["meta"]["parent"]
    assert parent["sha256"] == sha256(DEFAULT_WEIGHTS) and not parent["widened"]
    assert md["meta"]["seed"] == read_metadata(DEFAULT_WEIGHTS)["meta"]["seed"] + 1   # a new synthetic stream
    assert md["meta"]["averaged"].startswith("mean of") and md["meta"]["schedule"] == "cosine"
    assert md["meta"]["reuse"] == 1 and md["meta"]["hardware"].endswith("CPU threads")   # for the card
    assert md["meta"]["render_batches"] == 4                         # gpu_train.sh's RENDER_BATCHES
    log = (tmp_path / "out/session.log").read_text()
    assert "averaging the snapshots" in log and "synthetic (n=2" in log          # and its first evaluation
    # a narrower INIT is widened to WIDTH first (function preserved, train.widen)
    from prn_blender.core.network import ResFCN256
    save_weights(ResFCN256(2), tmp_path / "w2.safetensors", "ict-face-v2", {"steps": 0})
    model, _, md, _ = run(tmp_path / "out2", INIT=str(tmp_path / "w2.safetensors"), WIDTH="4", TRAIN_S="2",
                          EVAL_N="0", PHOTO_BG="0.5", JPEG="0.25", BODY="0.5", SHADOWS="0.5")
    assert model.width == 4 and md["meta"]["parent"]["widened"].startswith("width 2 -> 4")
    assert md["meta"]["generator"].endswith(" with photo-backgrounds 0.5 with jpeg 0.25 with body 0.5 with shadows 0.5")
    assert md["meta"]["seed"] == 17                                   # INIT records no seed


def test_ship_metrics_only_rewrites_the_metrics_and_context_and_nothing_else(tmp_path):
    """An inference change re-measures the shipped model: the card's evaluation commands, Metrics section and
    context limit are rewritten (the metrics from the eval folders, with our difference to the peer and its
    paired-bootstrap interval where both ran), every other line (training, lineage, recipe, curve) is kept."""
    from argparse import Namespace

    from prn_blender.core.constants import INFERENCE_ZOOM
    from prn_blender.core.paths import WEIGHTS_DIR
    from prn_blender.train.ship import CONTEXT_HEAD, EVAL_COMMANDS, METRICS_HEAD, rewrite_metrics
    card = tmp_path / "MODEL_CARD.md"
    old = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    card.write_text(old)
    ev = tmp_path / "ev"
    ev.mkdir()
    b = {"0-30": 1.25, "30-60": 2.5, "60-90": 3.75, "mean": 2.5, "all": 1.5}
    (ev / "metrics.json").write_text(json.dumps({"dataset": "aflw2000", "n": 2, "crop": "roi", "models": {"ours": {
        "nme2d": b, "nme3d": b, "per_image": {"image1": 1.0, "image2": 2.0}},
        "3ddfa_v2_mb05": {"nme2d": b, "nme3d": b, "per_image": {"image1": 2.0, "image2": 2.5}}}}))
    cal = {"landmark_calibration": {"radius": 3, "faces": 165, "sources": ["people", "photos"], "nme_before": 3.45,
                                    "nme_after_in_sample": 3.09, "cross_validation": [
                                        {"fitted_on": "people", "measured_on": "photos", "before": 3.17,
                                         "after": 3.07}]}}
    rewrite_metrics(card, Namespace(eval_aflw=[str(ev)], eval_aflw_detector=None, eval_synth=None),
                    blurs=(0.5, 0.75, 0.75), zoom=INFERENCE_ZOOM, meta=cal)
    new = card.read_text()
    assert "Landmarks are read at the 68 UV pixels the weights record (`landmark_uv`), each within 3 UV" in new
    assert "NME there 3.45 -> 3.09 % in-sample. Cross-validated (fitted on people, photos 3.17 -> 3.07 %)." in new
    assert "| ours | 1.25 | 2.50 | 3.75 | 2.50 | 1.50 | 1.50 | - |" in new and "| image2 | 2.00 | 2.50 |" in new
    assert ("- ours - 3ddfa_v2_mb05: -0.75 NME2D all, 95 % paired-bootstrap interval [-1.00, -0.50] over these 2 "
            "images (`python -m prn_blender.evaluate.compare`); ours better on 2, worse on 0") in new
    assert f"shrunk by {INFERENCE_ZOOM:g}" in new
    assert "The soup's ingredients blurred the surround of 50% / 75% / 75% of their training" in new
    head = lambda text: [x for x in text[:text.index(METRICS_HEAD)].split("\n") if not x.startswith("python eval.py")]
    assert head(new) == head(old)
    assert [x for x in new.split("\n") if x.startswith("python eval.py")] == list(EVAL_COMMANDS)
    tail = lambda text: text[text.index("## Training curve"):text.index(CONTEXT_HEAD)]
    assert tail(new) == tail(old)
    rewrite_metrics(card, Namespace(eval_aflw=[str(ev)], eval_aflw_detector=None, eval_synth=None),
                    blurs=(0.5, 0.75, 0.75), zoom=INFERENCE_ZOOM, meta=cal)
    assert card.read_text() == new                                    # idempotent: the sections are found again
    rewrite_metrics(card, Namespace(eval_aflw=[str(ev)], eval_aflw_detector=None, eval_synth=None), blurs=(0.5,),
                    zoom=INFERENCE_ZOOM, meta={})
    assert "  This run blurred the surround of 50% of its training scenes" in card.read_text()
    assert "Landmarks are read" not in card.read_text()


def test_detail_dresses_the_same_scenes(shared):
    """--detail: sample_detail has a generator of its own, so a run with it trains on the scenes of the run without
    it (same position maps), dressed: the hair gets strand streaks (its albedo varies where it was one colour), the
    skin a mottle, a share of the faces a full beard; the generator name records it, alone and with the others."""
    from prn_blender.synth.render import GENERATOR_VERSION, P_MOUTH
    from prn_blender.synth.sampler import sample_detail, sample_params
    from prn_blender.train import data
    plain = data.SyntheticStream(4, seed=2, density=20)
    dressed = data.SyntheticStream(4, seed=2, density=20, detail=True)
    (a, pa), (b, pb) = next(plain), next(dressed)
    assert torch.equal(pa, pb) and bool((a != b).flatten(1).any(1).all())
    r = plain.renderer
    p = sample_params(2, plain.ict.expression_names, torch.Generator().manual_seed(0))
    p["hair_idx"] = torch.tensor([0, 0])                                 # the lowest hairline
    hair = r.hair_masks[:, 0] > 0
    flat = r.albedo(p)
    p.update(sample_detail(2, torch.Generator().manual_seed(0), p["beard"]))
    rich = r.albedo(p)
    assert float(flat[:, hair].std(1).max()) < 1e-6 < float(rich[:, hair].std(1).min())
    assert torch.equal(flat[:, r.s_part >= P_MOUTH], rich[:, r.s_part >= P_MOUTH])  # mouth, teeth and eyes undressed
    beard = torch.zeros(4000)
    full = sample_detail(4000, torch.Generator().manual_seed(1), beard)["beard"]
    assert 0.09 < float((full > 0).float().mean()) < 0.15 and float(full[full > 0].min()) >= 0.6
    name = data.generator_name(["sh"], 0.5, detail=True)
    assert name == f"{GENERATOR_VERSION} without sh with detail with context-blur 0.5"
    assert data.without_of(name) == ["sh"] and data.context_blur_of(name) == 0.5 and data.detail_of(name)
    assert not data.detail_of(GENERATOR_VERSION)
    assert data.run_stream({"generator": name}, 2, 0).detail


def test_photo_backgrounds_put_photos_behind_the_same_scenes(shared):
    """--photo-backgrounds P: a share P of the scenes has a crop of a real photo (synth.photos) behind the face
    instead of its procedural background. The photos have a generator of their own, so a run with them trains on
    the scenes of the run without (same position maps, same head layers); the generator name records the share."""
    from prn_blender.synth.render import CANVAS_MARGIN as m
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.train import data
    plain = data.SyntheticStream(4, seed=2, density=20)
    photo = data.SyntheticStream(4, seed=2, density=20, photo_backgrounds=1.0)
    a, b = plain.render(), photo.render()
    assert torch.equal(a.pos, b.pos) and torch.equal(a.layer, b.layer)
    assert not torch.equal(a.background, b.background)
    alpha = a.layer[:, 3:, m:m + 256, m:m + 256].expand_as(a.image)
    assert torch.equal(a.image[alpha == 1], b.image[alpha == 1])           # the head is the same head
    assert bool(((a.image - b.image).abs() * (alpha == 0)).flatten(1).amax(1).gt(0.05).all())
    (_, pa), (_, pb) = next(plain), next(photo)
    assert torch.equal(pa, pb)
    name = data.generator_name(["sh"], 0.5, detail=True, photo_backgrounds=0.25)
    assert name == f"{GENERATOR_VERSION} without sh with detail with photo-backgrounds 0.25 with context-blur 0.5"
    assert data.without_of(name) == ["sh"] and data.context_blur_of(name) == 0.5 and data.detail_of(name)
    assert data.photo_backgrounds_of(name) == 0.25 and data.photo_backgrounds_of(GENERATOR_VERSION) == 0.0
    assert data.photo_backgrounds_of(f"{GENERATOR_VERSION} with photo-backgrounds 0.5") == 0.5
    assert data.run_stream({"generator": name}, 2, 0).photo_backgrounds == 0.25
    with pytest.raises(ValueError, match="photo backgrounds 1.5: a probability"):
        data.generator_name(photo_backgrounds=1.5)


def test_jpeg_codes_the_same_scenes(shared, tmp_path):
    """--jpeg P: a share P of the served scenes is JPEG-coded (sampler.compress) with a generator of its own, so a
    run with it trains on the scenes of the run without (same position maps, every image either the same or
    coded); the generator name records the share after the context blur, and the run's stream reads it back."""
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.train import data
    (ia, pa), (ib, pb) = (next(data.SyntheticStream(8, seed=2, density=20, context_blur=0.5, jpeg=j))
                          for j in (0.0, 0.5))
    assert torch.equal(pa, pb)
    coded = (ia != ib).flatten(1).any(1)
    assert 0 < int(coded.sum()) < 8
    assert float((ia - ib)[coded].abs().mean()) < 0.05                 # the same picture, coded
    name = data.generator_name(["sh"], 0.5, detail=True, photo_backgrounds=0.25, jpeg=0.5)
    assert name == (f"{GENERATOR_VERSION} without sh with detail with photo-backgrounds 0.25 with context-blur 0.5"
                    " with jpeg 0.5")
    assert data.context_blur_of(name) == 0.5 and data.photo_backgrounds_of(name) == 0.25
    assert data.jpeg_of(name) == 0.5 and data.jpeg_of(GENERATOR_VERSION) == 0.0
    assert data.run_stream({"generator": name}, 2, 0).jpeg == 0.5
    with pytest.raises(ValueError, match="jpeg 2: a probability"):
        data.generator_name(jpeg=2)
    from prn_blender.synth import sheet
    with pytest.raises(SystemExit, match=r"error: jpeg 2.0: a probability in \[0, 1\]"):   # one line, no file
        sheet.main(["--out", str(tmp_path / "s.png"), "--jpeg", "2"])
    assert not (tmp_path / "s.png").exists()


def test_body_turns_the_neck_between_head_and_torso(shared):
    """--body P: a share P of the scenes gets a torso under the head (sampler.sample_body), drawn with a generator of
    its own, so the run trains on the scenes of the run without: the same landmarks (the face above the neck does not
    move), the neck turned between the head and the torso, more of the canvas covered below the head. The neck's
    vertices turn about BODY_PIVOT by the torso's rotation from NECK_BASE down, not at all above NECK_TOP."""
    from prn_blender.synth.ict import HEAD_NECK_VERTS
    from prn_blender.synth.render import BODY_PIVOT, GENERATOR_VERSION, NECK_BASE, NECK_TOP, _rotation
    from prn_blender.synth.sampler import sample_body, sample_params
    from prn_blender.train import data
    plain = data.SyntheticStream(4, seed=2, density=20)
    body = data.SyntheticStream(4, seed=2, density=20, body=1.0)
    a, b = plain.render(), body.render()
    torch.testing.assert_close(a.kpt, b.kpt, rtol=0, atol=1e-4)
    assert bool((a.pos - b.pos).abs().amax() > 1)                        # the neck's pixels moved
    # heads bowed 30 deg show the shoulders at the canvas's bottom
    p = sample_params(4, plain.ict.expression_names, torch.Generator().manual_seed(3))
    p["pitch"][:] = 0.5
    bowed = {**p, **sample_body(4, torch.Generator().manual_seed(4))}
    q = a.layer.shape[-1] * 3 // 4
    cover = [float(r.layer[:, 3, q:].mean()) for r in (body.renderer.render(p), body.renderer.render(bowed))]
    assert cover[1] > cover[0] + 0.1
    assert data.generator_name(body=0.5).endswith(" with body 0.5") and data.body_of(GENERATOR_VERSION) == 0.0
    name = data.generator_name(["sh"], 0.5, detail=True, photo_backgrounds=0.25, jpeg=0.5, body=0.75)
    assert name.endswith(" with context-blur 0.5 with jpeg 0.5 with body 0.75") and data.body_of(name) == 0.75
    assert data.jpeg_of(name) == 0.5 and data.run_stream({"generator": name}, 2, 0).body == 0.75
    with pytest.raises(ValueError, match="body 2: a probability"):
        data.generator_name(body=2)
    # the neck's turn: a torso facing the camera under a head turned 60 deg to its left and tilted
    r = body.renderer
    p = sample_body(1, torch.Generator().manual_seed(0))
    p.update(yaw=torch.tensor([1.05]), pitch=torch.tensor([0.2]), roll=torch.tensor([0.1]),
             body_yaw=torch.zeros(1), body_pitch=torch.zeros(1), body_roll=torch.zeros(1))
    Q, _ = r._body_turn(p, _rotation(p["yaw"], p["pitch"], p["roll"]))
    torch.testing.assert_close(_rotation(p["yaw"], p["pitch"], p["roll"]) @ Q, torch.eye(3)[None], atol=1e-5, rtol=0)
    v = r.neutral[None]
    t = r._twist_neck(v, Q)
    y = v[0, :, 1]
    assert torch.equal(t[0, y > NECK_TOP], v[0, y > NECK_TOP])          # the head and face above the neck
    low = (y <= NECK_BASE) & (torch.arange(len(y)) < HEAD_NECK_VERTS[1])
    piv = v.new_tensor(BODY_PIVOT)
    torch.testing.assert_close(t[0, low], (v[0, low] - piv) @ Q[0].T + piv, atol=1e-4, rtol=0)
    # a torso turned as the head is does not turn the neck
    p.update(body_yaw=torch.ones(1), body_pitch=torch.ones(1), body_roll=torch.ones(1))
    Q1, _ = r._body_turn(p, _rotation(p["yaw"], p["pitch"], p["roll"]))
    torch.testing.assert_close(r._twist_neck(v, Q1), v, atol=1e-4, rtol=0)


def test_shadows_fall_where_the_face_hides_the_key_light(shared):
    """--shadows P: a share P of the scenes has cast shadows of the key light (sampler.sample_shadows, drawn with a
    generator of its own; FaceRenderer._lit): the geometry and ground truth are those of the run without; a scene
    whose ``shadow`` is off is drawn exactly as without the feature. A frontal face lit steeply from above gets the
    nose's shadow on the upper lip and keeps its forehead's light; lit from the camera, it has next to no shadow."""
    from prn_blender.synth.render import GENERATOR_VERSION
    from prn_blender.synth.sampler import sample_params, sample_shadows
    from prn_blender.train import data
    plain = data.SyntheticStream(4, seed=2, density=20)
    shade = data.SyntheticStream(4, seed=2, density=20, shadows=1.0)
    a, b = plain.render(), shade.render()
    assert torch.equal(a.kpt, b.kpt) and torch.equal(a.pos, b.pos) and torch.equal(a.visibility, b.visibility)
    assert bool((a.image - b.image).abs().amax() > 0.1) and bool((b.image <= a.image + 1e-6).all())
    assert data.generator_name(shadows=0.5).endswith(" with shadows 0.5") and data.shadows_of(GENERATOR_VERSION) == 0
    name = data.generator_name(["sh"], 0.5, body=0.75, shadows=0.25)
    assert name.endswith(" with body 0.75 with shadows 0.25") and data.body_of(name) == 0.75
    assert data.shadows_of(name) == 0.25 and data.run_stream({"generator": name}, 2, 0).shadows == 0.25
    with pytest.raises(ValueError, match="shadows 2: a probability"):
        data.generator_name(shadows=2)

    r = plain.renderer
    p = sample_params(2, plain.ict.expression_names, torch.Generator().manual_seed(5))
    p.update(yaw=torch.zeros(2), pitch=torch.zeros(2), roll=torch.zeros(2), persp_dist=torch.full((2,), math.inf),
             expression=torch.zeros_like(p["expression"]), hair_idx=torch.full((2,), 4), hair_vol=torch.zeros(2),
             bangs=torch.full((2,), 9.0), locks=torch.zeros(2, 2), glasses=torch.zeros(2), specular=torch.zeros(2),
             light_dir=torch.tensor([[0.0, 1.0, 0.35], [0.0, 0.0, 1.0]]))
    sh = sample_shadows(2, torch.Generator().manual_seed(0))
    off = r.render({**p, **sh, "shadow": torch.zeros(2, dtype=torch.bool)})
    lit, dark = r.render(p), r.render({**p, **sh})
    assert torch.equal(off.image, lit.image)
    m = (lit.layer.shape[-1] - 256) // 2
    kpt = lit.kpt[..., :2] + m

    def mean_at(batch, i, centre, half=5):
        x, y = (int(v) for v in centre.round())
        return float(batch.layer[i, :3, y - half:y + half + 1, x - half:x + half + 1].mean())

    lip = (kpt[:, 33] + kpt[:, 51]) / 2                      # under the nose, above the upper lip
    brow = (kpt[:, 21] + kpt[:, 22]) / 2
    forehead = brow + (brow - kpt[:, 30]) * 0.6              # above the brows, as far as the nose is below them
    assert mean_at(dark, 0, lip[0]) < 0.8 * mean_at(lit, 0, lip[0])
    assert mean_at(dark, 0, forehead[0]) > 0.97 * mean_at(lit, 0, forehead[0])
    face = lit.layer[1, 3] > 0
    assert float(dark.layer[1, :3][:, face].mean()) > 0.98 * float(lit.layer[1, :3][:, face].mean())


def test_no_face_model_is_one_error_line_and_writes_nothing(tmp_path):
    """train.py and the contact sheet without the ICT face model (no development data folder): one error line that
    says where it looked and how to point elsewhere, a non-zero exit, and no output folder or file."""
    from prn_blender.synth import sheet
    missing = tmp_path / "nowhere"
    p = subprocess.run(_train_cmd(tmp_path / "x", "--shared", str(missing), "--detail"), check=False, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"error: development data folder not found at {missing} "
                                "(set PRN_BLENDER_SHARED or pass --shared)")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit, match="^error: development data folder not found at "):
        sheet.main(["--out", str(tmp_path / "s.png"), "--shared", str(missing), "--detail"])
    assert not (tmp_path / "s.png").exists()


def test_open_eyes_show_an_iris_and_a_pupil_on_the_gaze_axis(engine):
    """ICT's outer eyeball shell is drawn sclera off its gaze axis, iris about it and pupil at its centre (its UV
    square's centre is the axis), and the iris shows in the image: a frontal face's eye centres change with the
    iris colour (in ictsynth-11 the iris sat on the hidden inner shell and did not show)."""
    from prn_blender.synth.render import P_SCLERA
    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    p = _bare(sample_params(2, ict.expression_names, torch.Generator().manual_seed(5)))
    p["expression"].zero_()
    for k in ("yaw", "pitch", "roll"):
        p[k].zero_()
    p["sclera"] = torch.ones(2, 3)
    p["iris"] = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    alb = r.albedo(p)[0]
    shell = torch.from_numpy(r._canon).float()
    for side in (r.s_part == P_SCLERA) & (shell[:, 0] > 0), (r.s_part == P_SCLERA) & (shell[:, 0] < 0):
        q = shell[side] - shell[side].mean(0)
        angle = torch.rad2deg(torch.acos((q[:, 2] / q.norm(dim=1)).clamp(-1, 1)))
        a = alb[side]
        assert torch.allclose(a[angle > 40], torch.ones(3))                              # sclera
        front = a[angle < 15]
        assert len(front) > 20 and bool((front[:, 1] == 0).all())                         # iris or pupil
        assert 0.05 < float((front[:, 0] < 0.5).float().mean()) < 0.6                      # a dark pupil at the centre
    outs = []
    for colour in (0.0, 1.0):
        p["iris"] = torch.full((2, 3), colour)
        outs.append(r.render(p))
    img, kpt = [o.image for o in outs], outs[1].kpt
    for a, b in ((36, 42), (42, 48)):
        for i in range(2):
            ex, ey = kpt[i, a:b, :2].mean(0).round().long().tolist()
            d = (img[1][i, :, ey - 2:ey + 3, ex - 2:ex + 3] - img[0][i, :, ey - 2:ey + 3, ex - 2:ex + 3]).mean(0)
            assert float(d.max()) > 0.15, (i, a, d)


def test_closed_eyes_show_lid_skin_not_the_eyeball_or_a_lash_smear(engine):
    """At a full blink the lids cover the eyeball, and the lash colour stays on the lids' front edges. Inside the eye
    openings seen open (and 3 pixels about them): the eyeball's colour changes over 20 % of the pixels of an open eye
    and under 1 % of a closed one; the lash colour over 4 % of an open eye's (its lash line) and under 10 % of a
    closed one's. ictsynth-12 failed both: the eyeball showed through the sparsely sampled lids (4-12 %), and its
    lash band in UV pixels stretched over the whole closed lid (45-56 %)."""
    import cv2

    from prn_blender.synth.sampler import sample_params
    ict, r = engine
    p = _bare(sample_params(2, ict.expression_names, torch.Generator().manual_seed(5)))
    for k in ("yaw", "pitch", "roll"):
        p[k].zero_()
    p["expression"].zero_()
    p["skin"], p["brow_col"] = torch.tensor([[0.9, 0.7, 0.58]]).expand(2, 3), torch.zeros(2, 3)

    def render(blink, eyeball, lash):
        q = {k: v.clone() for k, v in p.items()}
        for n in ("eyeBlink_L", "eyeBlink_R"):
            q["expression"][:, ict.expression_index(n)] = blink
        q["sclera"], q["iris"] = torch.full((2, 3), eyeball), torch.full((2, 3), eyeball)
        q["lash"] = torch.full((2,), lash)
        return r.render(q)

    base = render(0.0, 1.0, 0.9)
    openings = []
    for i in range(2):                                        # the eye openings seen open, per face and eye
        for a in (36, 42):
            m = np.zeros((256, 256), np.uint8)
            cv2.fillPoly(m, [np.round(base.kpt[i, a:a + 6, :2].numpy()).astype(np.int32)], 1)
            m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))   # the lid margins too
            openings.append((i, torch.from_numpy(m.astype(bool))))

    def changed(x, y):
        """Per opening, the share of its pixels that differ between renders x and y."""
        d = (x.image - y.image).abs().amax(1) > 0.05
        return [float(d[i][m].float().mean()) for i, m in openings]

    shut = render(1.0, 1.0, 0.9)
    eyeball_open = changed(base, render(0.0, 0.0, 0.9))
    eyeball_shut = changed(shut, render(1.0, 0.0, 0.9))
    lash_open = changed(base, render(0.0, 1.0, 0.0))
    lash_shut = changed(shut, render(1.0, 1.0, 0.0))
    assert min(eyeball_open) > 0.2, eyeball_open
    assert max(eyeball_shut) < 0.01, eyeball_shut
    assert min(lash_open) > 0.04 and max(lash_shut) < 0.1, (lash_open, lash_shut)
