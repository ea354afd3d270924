"""Landmark metrics: NME against hand-computed values, yaw buckets, CED / AUC, the AFLW2000-3D loader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from prn_blender.evaluate import metrics as M


def _grid68(w=40.0, h=10.0):
    """68 points spread over a w x h box (corners included), z = 0..67."""
    rng = np.random.default_rng(0)
    pts = np.zeros((68, 3))
    pts[:, 0] = rng.uniform(0, w, 68)
    pts[:, 1] = rng.uniform(0, h, 68)
    pts[:4, :2] = [[0, 0], [w, 0], [0, h], [w, h]]
    pts[:, 2] = np.arange(68)
    return pts + [100.0, 50.0, 0.0]


def test_nme_offset_box_hand_computed():
    gt = _grid68(40, 10)                  # sqrt(w*h) = sqrt(400) = 20
    pred = gt + [3.0, 4.0, 0.0]           # every point off by 5 px in x,y
    assert M.nme(pred, gt) == pytest.approx(5 / 20 * 100)       # 25 %
    assert isinstance(M.nme(pred, gt), float)
    assert M.nme(pred[:, :2], gt[:, :2], dims=2) == pytest.approx(25.0)
    # 3D: add a z offset of 12 -> |(3,4,12)| = 13
    pred3 = gt + [3.0, 4.0, 12.0]
    assert M.nme(pred3, gt, dims=3) == pytest.approx(13 / 20 * 100)
    assert M.nme(pred3, gt, dims=2) == pytest.approx(25.0)       # z ignored in 2D
    assert M.nme(gt, gt) == 0.0


def test_nme_mixed_errors_and_iod():
    gt = _grid68(40, 10)
    pred = gt.copy()
    pred[0, :2] += [6.0, 8.0]             # one point off by 10, the rest exact -> mean error 10/68
    assert M.nme(pred, gt) == pytest.approx(10 / 68 / 20 * 100)
    gt_iod = gt.copy()
    gt_iod[36, :2] = [100.0, 50.0]
    gt_iod[45, :2] = [130.0, 90.0]         # outer inter-ocular distance 50
    pred = gt_iod + [3.0, 4.0, 0.0]
    assert M.nme(pred, gt_iod, norm="iod") == pytest.approx(5 / 50 * 100)
    with pytest.raises(ValueError):
        M.nme(pred, gt_iod, norm="nope")


def test_nme_by_landmark_group():
    gt = _grid68(40, 10)                   # normalizer 20
    pred = gt.copy()
    pred[0:17, :2] += [6.0, 8.0]           # the jaw off by 10 px, the rest exact
    pred[30, :2] += [0.0, 4.0]             # one nose point (of 9) off by 4
    g = M.nme_by_group(pred, gt)
    assert g == pytest.approx({"jaw": 50.0, "brows": 0.0, "nose": 4 / 9 / 20 * 100, "eyes": 0.0, "mouth": 0.0})
    sizes = {k: b - a for k, (a, b) in M.GROUPS.items()}
    assert sum(sizes.values()) == 68 and sum(g[k] * sizes[k] for k in g) / 68 == pytest.approx(M.nme(pred, gt))
    gb = M.nme_by_group(np.stack([pred, gt]), np.stack([gt, gt]))
    assert gb["jaw"].tolist() == pytest.approx([50.0, 0.0])
    with pytest.raises(ValueError, match="68-point"):
        M.nme_by_group(pred[:60], gt[:60])


def test_nme_batched():
    gt = np.stack([_grid68(40, 10), _grid68(20, 20)])   # sqrt(wh) = 20 and 20
    pred = gt + np.array([[[3.0, 4.0, 0.0]], [[6.0, 8.0, 0.0]]])
    out = M.nme(pred, gt)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, [25.0, 50.0])
    np.testing.assert_allclose(M.nme(pred[..., :2], gt[..., :2]), [25.0, 50.0])


def test_yaw_buckets():
    vals = [1.0, 3.0, 10.0, 20.0, 100.0, 200.0]
    yaws = [0.0, -30.0, 30.5, -60.0, 75.0, 95.0]          # buckets: 0-30 x2, 30-60 x2, 60-90 x2 (95 -> 60-90)
    b = M.yaw_buckets(vals, yaws)
    assert b["0-30"] == pytest.approx(2.0)
    assert b["30-60"] == pytest.approx(15.0)
    assert b["60-90"] == pytest.approx(150.0)
    assert b["mean"] == pytest.approx((2 + 15 + 150) / 3)
    assert b["all"] == pytest.approx(np.mean(vals))
    # an empty bucket is NaN and left out of the bucket mean
    b = M.yaw_buckets([1.0, 2.0, 7.0], [10.0, 20.0, 45.0])
    assert np.isnan(b["60-90"])
    assert b["mean"] == pytest.approx((1.5 + 7.0) / 2)
    assert b["all"] == pytest.approx(10 / 3)


def test_ced_and_auc():
    vals = np.array([0.5, 1.0, 2.0, 2.0, 4.0, 9.5])
    x, y = M.ced(vals, max_x=10, n=1001)
    assert x.shape == y.shape == (1001,)
    assert x[0] == 0 and x[-1] == 10
    assert np.all(np.diff(y) >= 0)
    assert y[-1] == 1.0
    assert y[np.searchsorted(x, 2.0)] == pytest.approx(4 / 6)     # values <= 2: 0.5, 1, 2, 2
    assert y[0] == 0.0
    # values beyond max_x: the curve stays below 1
    _, y2 = M.ced([1.0, 20.0], max_x=10)
    assert y2[-1] == 0.5
    # AUC: all errors 0 -> 1; a single error e < max_x -> 1 - e / max_x
    assert M.auc([0.0, 0.0], 7.0) == pytest.approx(1.0)
    assert M.auc([3.5], 7.0) == pytest.approx(0.5, abs=1e-3)
    assert M.auc([8.0], 7.0) == pytest.approx(0.0)


def test_load_aflw2000_sorted_order_without_json(tmp_path):
    """A full 2000-image folder with no json maps rows by sorted image name."""
    d = tmp_path / "aflw2000-3d"
    (d / "images").mkdir(parents=True)
    pts = np.arange(2000 * 3 * 68, dtype=np.float32).reshape(2000, 3, 68)
    np.save(d / "AFLW2000-3D.pts68.npy", pts)
    np.save(d / "AFLW2000-3D.pose.npy", np.linspace(-90, 90, 2000).astype(np.float32))
    np.save(d / "AFLW2000-3D_crop.roi_box.npy", np.tile(np.arange(4, dtype=np.float32), (2000, 1)))
    for i in range(2000):
        (d / "images" / f"image{i * 3:05d}.jpg").touch()
    s = M.load_aflw2000(d)
    assert len(s) == 2000
    assert s[5]["name"] == "image00015" and s[5]["index"] == 5
    np.testing.assert_array_equal(s[5]["gt"], pts[5].T)
    assert s[5]["gt"].shape == (68, 3) and s[5]["gt"].dtype == np.float32
    # with a json that maps a subset, the json wins for those names
    (d / "aflw2000_3ddfa_index_exact.json").write_text(json.dumps({"index": {"image00015": 7}}))
    s = M.load_aflw2000(d)
    assert s[5]["index"] == 7 and s[6]["index"] == 6


@pytest.mark.shared
def test_load_aflw2000_shared(shared):
    import scipy.io as sio
    s = M.load_aflw2000(shared / "aflw2000-3d")
    assert len(s) == 16
    for r in s[:3]:
        m = sio.loadmat(str(r["image"].with_suffix(".mat")))
        np.testing.assert_allclose(r["gt"], m["pt3d_68"].T, atol=1e-3)
        # the annotation's yaw is > 0 for a subject turned to its right; the loader gives core.pose's convention
        assert r["yaw"] == pytest.approx(-np.degrees(m["Pose_Para"][0, 1]), abs=1e-3)
        assert r["roi"].shape == (4,)


def _metrics(tmp_path, name, per_image, dataset="pseudo", peer=None):
    d = tmp_path / name
    d.mkdir()
    models = {"ours": {"per_image": per_image}} | ({"peer": {"per_image": peer}} if peer else {})
    (d / "metrics.json").write_text(json.dumps({"dataset": dataset, "models": models}))
    return d


def test_compare_weighs_sources_and_brackets_the_difference():
    from prn_blender.evaluate.compare import compare
    base = {f"a/{i}": 2.0 + 0.1 * i for i in range(6)} | {f"b/{i}": 3.0 for i in range(30)}
    shift = {k: v - 0.5 for k, v in base.items()}                 # better by 0.5 on every image: no doubt left
    r = compare(base, shift, per_source=True)
    assert r.diff == pytest.approx(-0.5) and r.low == pytest.approx(-0.5) and r.high == pytest.approx(-0.5)
    assert (r.better, r.worse, r.n, r.missed) == (36, 0, 36, 0) and r.by_source == {"a": (6, 0), "b": (30, 0)}
    assert r.base == pytest.approx(((2.0 + 2.5) / 2 + 3.0) / 2)    # mean of the two sources' means
    # source a (6 images) better by 0.3 or 0.9 (0.6 on average), source b (30) worse by 0.1 each: each source
    # weighs the same, and only a's resamples vary
    mixed = {k: v - 0.3 - 0.6 * (int(k[2:]) % 2) if k.startswith("a/") else v + 0.1 for k, v in base.items()}
    r = compare(base, mixed, per_source=True)
    assert r.diff == pytest.approx((-0.6 + 0.1) / 2) and -0.4 <= r.low < r.diff < r.high <= -0.1
    assert compare(base, mixed, per_source=False).diff == pytest.approx((6 * -0.6 + 30 * 0.1) / 36)
    assert compare(base, mixed, per_source=True, seed=3).high == compare(base, mixed, per_source=True, seed=3).high
    held = compare(base, mixed, per_source=True, sources=("b",))      # judged on source b alone: worse by 0.1
    assert held.diff == pytest.approx(0.1) and held.low == pytest.approx(0.1) and held.by_source == {"b": (0, 30)}
    for kw, msg in (({"per_source": True, "sources": ("c",)}, "no source c"),
                    ({"per_source": False, "sources": ("b",)}, "pseudo")):
        with pytest.raises(ValueError, match=msg):
            compare(base, mixed, **kw)


def test_compare_one_outlier_is_not_evidence_and_the_cap_removes_it():
    from prn_blender.evaluate.compare import compare
    base = {f"p/{i}": 2.0 for i in range(10)} | {"p/odd": 40.0}    # one face whose label is wrong
    cand = {k: v + 0.1 for k, v in base.items()} | {"p/odd": 10.0}  # worse on the ten, "better" on the wrong one
    r = compare(base, cand, per_source=True)
    assert r.diff == pytest.approx((10 * 0.1 - 30) / 11) and r.diff < -2
    assert r.high > 0                                               # resamples without it: worse by 0.1
    c = compare(base, cand, per_source=True, cap=10.0)             # capped at 10 %: the odd face is a tie
    assert c.diff == pytest.approx(10 * 0.1 / 11) and c.low > 0 and (c.better, c.worse) == (0, 10)


def test_compare_cli_leaves_out_misses_and_rejects_mismatched_runs(tmp_path, capsys):
    from prn_blender.evaluate.compare import main
    base = _metrics(tmp_path, "base", {"s/1": 3.0, "s/2": 4.0, "s/3": None})
    cand = _metrics(tmp_path, "cand", {"s/1": 2.0, "s/2": 3.0, "s/3": 1.0})
    assert main([str(base), str(cand), "--boot", "200"]) == 0
    out = capsys.readouterr().out
    assert f"| {cand} | 3.5000 | 2.5000 | -1.0000 | [-1.0000, -1.0000] | 2 / 0 of 2 | s 2/0 | -1.000 | 1 |" in out
    assert main([str(base), str(cand), "--boot", "200", "--sources", "s"]) == 0
    assert "(mean of source means of s)" in capsys.readouterr().out
    both = _metrics(tmp_path, "both", {"s/1": 2.0, "s/2": 3.0}, peer={"s/1": 1.0, "s/2": 1.0})   # us vs the peer
    assert main([str(both), str(both), "--base-model", "peer", "--boot", "200"]) == 0
    assert "| 1.0000 | 2.5000 | +1.5000 | [+1.0000, +2.0000] | 0 / 2 of 2 |" in capsys.readouterr().out
    other = _metrics(tmp_path, "other", {"s/1": 2.0, "s/9": 3.0, "s/3": 1.0})
    aflw = _metrics(tmp_path, "aflw", {"s/1": 2.0, "s/2": 3.0, "s/3": 1.0}, dataset="aflw2000")
    for argv, msg in (([base, other], "different images"), ([base, aflw], "'aflw2000' evaluation"),
                      ([base, tmp_path / "none"], "no metrics.json"), ([base, cand, "--model", "peer"], "no per-image"),
                      ([base, cand, "--cap", "0"], "--cap > 0"), ([base, cand, "--sources", "x"], "no source x")):
        with pytest.raises(SystemExit, match=msg):
            main([str(x) for x in argv])
