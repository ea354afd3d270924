"""Core: network shape/params, checkpoint name mapping, layouts, crop round trips, image inputs, detector."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prn_blender.core.constants import RESOLUTION
from prn_blender.core.crop import crop_from_box, crop_from_landmarks, uncrop_position_map, warp
from prn_blender.core.image_io import ImageError, load_image
from prn_blender.core.layout import load_layout
from prn_blender.core.network import ResFCN256, count_parameters, tf_name_map
from prn_blender.core.pose import estimate_pose
from prn_blender.core.result import CropTransform


def test_full_model_parameter_count_and_output():
    m = ResFCN256(16)
    assert count_parameters(m) == 13_353_618
    with torch.no_grad():
        y = m.eval()(torch.rand(2, 3, 256, 256))
    assert y.shape == (2, 3, 256, 256) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert count_parameters(ResFCN256(8)) == 3_341_986


def test_strided_shortcut_is_a_strided_1x1_conv():
    """ResBlock runs its stride-2 1x1 shortcut as subsampling + a stride-1 conv (torch 2.13's channels_last CPU
    backward of the strided conv corrupts the heap): the same function of the same weights."""
    import torch.nn.functional as F
    blk = ResFCN256(4).encoder[0]
    x = torch.rand(2, 4, 64, 64)
    ref = F.conv2d(x, blk.shortcut.weight, stride=2)
    assert blk.stride == 2 and torch.equal(blk.shortcut(x[..., ::2, ::2]), ref)


def test_channels_last_bf16_training_step_and_smooth_output():
    """A bf16 autocast training step in channels_last runs (it crashed with the strided shortcut) and gives the
    NCHW step's loss; under autocast the output is float32 and not quantized to bf16's 2^-8 steps (about a crop
    pixel), which had terraced the predicted surface."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 256, 256)
    losses = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        m = ResFCN256(2).to(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x.contiguous(memory_format=fmt))
        loss = (y - 0.5).square().mean()
        loss.backward()
        assert y.dtype == torch.float32 and all(p.grad is not None for p in m.parameters())
        losses.append(loss.item())
    # the two layouts run different bf16 kernels: 1.0e-3 apart relative on a CPU with AMX-BF16, within bf16's own
    # precision (2^-8 = 3.9e-3); a wrong result (the strided shortcut's crash, a layout mix-up) is far off
    assert abs(losses[0] - losses[1]) < 4e-3 * losses[0]
    v = y.detach()[0, 0, 100:110, 100:110].flatten()
    assert len(torch.unique(v)) == 100 and not torch.equal(v, v.bfloat16().float())


def test_widen_preserves_the_function_and_breaks_symmetry():
    """train.widen: a width-4 network with trained-like (random) weights and BN statistics, widened to 6 and 8,
    gives the same position maps in eval and in train mode; the copies of a channel differ after one step."""
    from prn_blender.train.widen import widen
    torch.manual_seed(0)
    m = ResFCN256(4)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 256, 256)
    for width in (6, 8):
        w = widen(m.eval(), width, seed=1)
        assert w.width == width and count_parameters(w) == count_parameters(ResFCN256(width))
        with torch.no_grad():
            torch.testing.assert_close(w(x), m(x), atol=2e-5, rtol=0)
            torch.testing.assert_close(w.train()(x), m.train()(x), atol=2e-4, rtol=0)   # batch statistics
    # one training step: the first encoder conv's copied filters (new channel k copies an old one) move apart
    opt = torch.optim.SGD(w.parameters(), lr=1.0)
    w.train()(x).square().mean().backward()
    opt.step()
    f = w.conv0.conv.weight.detach().flatten(1)
    d = torch.cdist(f[4:], f[:4]).min(1).values
    assert (d > 1e-6).all()
    with pytest.raises(ValueError):
        widen(ResFCN256(8), 4)


def test_widen_command_on_the_shipped_weights(tmp_path):
    """``python -m prn_blender.train.widen`` writes a wider weights file with the same predictions and the widening
    in its metadata (train.py --init takes it, and the card's lineage names it)."""
    from prn_blender.core.weights import DEFAULT_WEIGHTS, load_model
    from prn_blender.train.ship import _lineage
    from prn_blender.train.widen import main
    m, _, md0 = load_model(DEFAULT_WEIGHTS)
    W = m.width + 4
    out = tmp_path / f"w{W}.safetensors"
    assert main(["--init", str(DEFAULT_WEIGHTS), "--width", str(W), "--out", str(out)]) == 0
    w, lay, md = load_model(out)
    assert w.width == W and lay.name == md0["layout"] and md["meta"]["steps"] == md0["meta"]["steps"]
    assert md["meta"]["widened"] == f"width {m.width} -> {W} (Net2WiderNet, seed 0) from {DEFAULT_WEIGHTS.name}"
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(w(x), m(x), atol=1e-4, rtol=0)
    parent = {"file": out.name, "sha256": "0" * 64, "steps": 5, "images_seen": 40, "wall_time_s": 36.0,
              "preset_history": "paper (ictsynth-10) from step 0", "widened": md["meta"]["widened"]}
    assert _lineage(parent).endswith(f"then widened: {md['meta']['widened']}")
    # train.py takes its width from --init and refuses a contradicting --width before writing anything
    from prn_blender.train.loop import main as train_main
    from prn_blender.train.loop import resolve_width
    assert resolve_width(None, str(out), None) == W and resolve_width(None, None, None) == 16
    assert resolve_width(None, str(out), 2) == 2                  # a resumed run keeps its own width
    with pytest.raises(SystemExit, match=f"--width {W + 4}: --init {out.name} has width {W}; .*widen it first"):
        train_main(["--out", str(tmp_path / "run"), "--init", str(out), "--width", str(W + 4)])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match=f"--width 8: --init {out.name} has width {W}; leave --width out to keep "
                                         "it$"):
        resolve_width(8, str(out), None)
    with pytest.raises(SystemExit, match="--init: weights file not found"):
        resolve_width(None, str(tmp_path / "missing.safetensors"), None)


def test_soup_is_the_mean_of_fine_tunes_of_one_model_and_refuses_unrelated_ones(tmp_path):
    """``python -m prn_blender.train.soup``: the uniform mean of weights that share an ancestor (an ingredient may
    be the ancestor itself), each ingredient recorded; BatchNorm statistics shared by every ingredient are kept; two
    networks with no common ancestor, a width mismatch, the same file twice or an ingredient as --out are refused
    before anything is written. --fp16 writes the float32 soup's tensors cast to float16, as train.ship would."""
    from safetensors.torch import load_file

    from prn_blender.core.weights import WeightsError, load_model, save_weights, sha256
    from prn_blender.train.soup import main, make_soup

    def net(seed, width=2, parent=None, path=None):
        torch.manual_seed(seed)
        m = ResFCN256(width)
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.normal_()
        meta = {"steps": seed, "images_seen": 10 * seed, "wall_time_s": 1.0, "generator": "ictsynth-11",
                "parent": parent}
        return save_weights(m, tmp_path / path, "ict-face-v2", meta, dtype=torch.float32), m

    base, _ = net(1, path="base.safetensors")
    up = {"file": base.name, "sha256": sha256(base), "steps": 1, "images_seen": 10, "wall_time_s": 1.0,
          "preset_history": "paper", "parent": None}
    a, ma = net(2, parent=up, path="a.safetensors")
    b, mb = net(3, parent=up, path="b.safetensors")
    model, layout, meta = make_soup([a, b])
    assert layout == "ict-face-v2" and meta["soup_ancestor"] == up["sha256"] and meta["parent"] == up
    assert [i["sha256"] for i in meta["soup"]] == [sha256(a), sha256(b)] and meta["images_seen"] == 50
    assert meta["steps"] == 5 and meta["preset_history"].startswith("the mean (model soup) of 2 fine-tunes: "
                                                                   f"{a.as_posix()} ")
    assert "seed" not in meta                                          # none of them records one
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (ma.state_dict()[k] + mb.state_dict()[k]) / 2)
    assert make_soup([base, a])[2]["soup_ancestor"] == up["sha256"]       # the ancestor is an ingredient
    # a fine-tune with BatchNorm frozen runs with a's statistics: the soup keeps them, recalibrating nothing by default
    assert not meta["bn_shared"]
    torch.manual_seed(8)
    mf = ResFCN256(2)
    stats = {k: v for k, v in ma.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    mf.load_state_dict({**mf.state_dict(), **stats})
    frozen = save_weights(mf, tmp_path / "frozen.safetensors", "ict-face-v2", {"steps": 8, "parent": up},
                          dtype=torch.float32)
    kept = tmp_path / "kept.safetensors"
    assert main([str(a), str(frozen), "--out", str(kept)]) == 0
    km, _, kmd = load_model(kept)
    assert kmd["meta"]["bn_shared"] and "bn_recalibrated_batches" not in kmd["meta"]
    for k, v in stats.items():
        torch.testing.assert_close(km.state_dict()[k], v, rtol=0, atol=0)
    out = tmp_path / "soup.safetensors"
    assert main([str(a), str(b), str(base), "--out", str(out), "--bn-batches", "0"]) == 0
    assert len(load_model(out)[2]["meta"]["soup"]) == 3
    half = tmp_path / "half.safetensors"                   # --fp16: the tensors train.ship would write for this soup
    assert main([str(a), str(b), str(base), "--out", str(half), "--bn-batches", "0", "--fp16"]) == 0
    full, got = load_file(str(out)), load_file(str(half))
    assert {v.dtype for v in full.values() if v.is_floating_point()} == {torch.float32}
    assert {v.dtype for v in got.values() if v.is_floating_point()} == {torch.float16}
    for k, v in full.items():
        assert torch.equal(got[k], v.half() if v.is_floating_point() else v)
    other, _ = net(4, path="other.safetensors")
    with pytest.raises(WeightsError, match="share no ancestor"):
        make_soup([a, other])
    wide, _ = net(5, width=4, parent=up, path="wide.safetensors")
    with pytest.raises(WeightsError, match="width 4"):
        make_soup([a, wide])
    with pytest.raises(WeightsError, match="twice"):
        make_soup([a, a])
    with pytest.raises(SystemExit, match="share no ancestor"):
        main([str(a), str(other), "--out", str(tmp_path / "no.safetensors"), "--bn-batches", "0"])
    assert not (tmp_path / "no.safetensors").exists()
    with pytest.raises(SystemExit):
        main([str(a), str(b), "--out", str(a), "--bn-batches", "0"])
    assert load_model(a)[2]["meta"]["steps"] == 2                         # untouched


def test_ship_a_soup_with_its_ingredients_card_and_curve(tmp_path, monkeypatch):
    """``ship --soup S --ingredients RUN...``: fp16 weights equal to the soup's, a card that names each ingredient
    (checked against the soup's sha256 record) and their common ancestor, and their curves; run folders whose
    weights are not the ingredients, or too few of them, are refused before anything is written."""
    import json

    from prn_blender.core.weights import load_model, save_weights, sha256
    from prn_blender.train import ship
    from prn_blender.train.soup import main as soup_main
    up = {"file": "base.safetensors", "sha256": "b" * 64, "steps": 7, "images_seen": 70, "wall_time_s": 3600.0,
          "preset_history": "paper (ictsynth-11) from step 0", "parent": None}
    runs = []
    for k, (device, hw) in enumerate((("cuda", "NVIDIA H200"), ("cpu", "x86_64, 1 CPU threads"))):
        torch.manual_seed(k)
        run = tmp_path / f"r{k}"
        meta = {"steps": 4, "images_seen": 32, "wall_time_s": 60.0, "generator": "ictsynth-11", "batch": 8,
                "reuse": 0, "seed": k, "lr": 1e-4, "warmup": 1, "schedule": "cosine", "preset": "paper",
                "preset_history": "paper (ictsynth-11) from step 0", "amp": "bf16", "device": device,
                "hardware": hw, "max_time": 60, "parent": up}
        if k:                                 # a run on dressed scenes, more of them turned: its recipe says so
            meta.update(generator="ictsynth-11 with detail with photo-backgrounds 0.5 with context-blur 0.5 "
                                  "with jpeg 0.5 with body 0.5 with shadows 0.25",
                        yaw_uniform=0.6, lid_weight=2.0)
        save_weights(ResFCN256(2), run / "weights.safetensors", "ict-face-v2", meta, dtype=torch.float32)
        (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "samples": 8 * s, "loss": 1.0 / s, "lr": 1e-4,
                                                           "elapsed": 15.0 * s}) + "\n" for s in range(1, 5)))
        runs.append(run)
    soup = tmp_path / "soup" / "weights.safetensors"
    assert soup_main([str(r / "weights.safetensors") for r in runs] + ["--out", str(soup), "--bn-batches", "0"]) == 0
    monkeypatch.setattr(ship, "WEIGHTS_DIR", tmp_path / "assets")
    monkeypatch.setattr(ship, "DEFAULT_WEIGHTS", tmp_path / "assets" / "w.safetensors")
    with pytest.raises(SystemExit, match="2 ingredients; --ingredients gives 1"):
        ship.main(["--soup", str(soup), "--ingredients", str(runs[0])])
    with pytest.raises(SystemExit, match="r1/weights.safetensors: not the soup's ingredient 1 of 2 .*r0/weights"):
        ship.main(["--soup", str(soup), "--ingredients", str(runs[1]), str(runs[0])])
    assert not (tmp_path / "assets").exists()
    assert ship.main(["--soup", str(soup), "--ingredients", *map(str, runs), "--recipe", "# the ancestor"]) == 0
    shipped, _, md = load_model(tmp_path / "assets" / "w.safetensors")
    for k, v in load_model(soup)[0].state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(shipped.state_dict()[k], v.half().float())
    assert md["meta"]["shipped_from"] == "soup" and md["meta"]["hardware"] == "NVIDIA H200, x86_64, 1 CPU threads"
    assert md["meta"]["seed"] == 1                                     # the newest stream: a continuation takes 2
    card = (tmp_path / "assets" / "MODEL_CARD.md").read_text()
    for r in runs:
        assert f"| ingredient `{r.name}` | sha256 `{sha256(r / 'weights.safetensors')[:12]}...`; 4 steps, batch 8, " \
               "32 images seen" in card
        assert f"python train.py --out runs/{r.name} --width 2 --batch 8 " in card
    assert "--warmup 1 --lid-weight 2 --context-blur 0.5 --detail --photo-backgrounds 0.5 --jpeg 0.5 --body 0.5 --shadows 0.25 " \
        "--yaw-uniform 0.6 --schedule cosine" in card
    assert "the uniform mean of the weights of 2 fine-tunes of the model below" in card
    assert "(Wortsman et al. 2022, \"Model soups\"), BatchNorm statistics the ones every ingredient has, kept |" \
        in card                                          # fresh networks: the same statistics
    assert "r1/weights.safetensors\npython" in card              # made with the default BatchNorm handling
    from prn_blender.train.ship import _bn_flag
    assert _bn_flag({"bn_recalibrated_batches": 24}) == "" and _bn_flag({"bn_shared": True}) == ""
    assert _bn_flag({}) == " --bn-batches 0" and _bn_flag({"bn_shared": True, "bn_recalibrated_batches": 8}) \
        == " --bn-batches 8"
    assert f"| fine-tuned from | `base.safetensors` sha256 `{'b' * 12}...`: 7 steps" in card
    assert "| in all | 15 steps, 134 images seen, 1.03 h of training |" in card        # 7 + 2x4, 70 + 2x32
    assert "# the ancestor" in card and "--soup " + soup.as_posix() + " --ingredients" in card
    assert (tmp_path / "assets" / "training_curve.png").stat().st_size > 1000
    # the next soup: the shipped soup (a folder with its weights alone) and a frozen-BN fine-tune of it
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "weights.safetensors").write_bytes((tmp_path / "assets" / "w.safetensors").read_bytes())
    run = tmp_path / "r2"
    save_weights(ResFCN256(2), run / "weights.safetensors", "ict-face-v2",
                 {**meta, "seed": 5, "bn_frozen": True,
                  "parent": {"file": "w.safetensors", "sha256": sha256(prev / "weights.safetensors"), "steps": 8,
                             "images_seen": 64, "wall_time_s": 120.0, "preset_history": "soup", "parent": up}},
                 dtype=torch.float32)
    (run / "log.jsonl").write_text((runs[1] / "log.jsonl").read_text())
    soup2 = tmp_path / "soup2" / "weights.safetensors"
    assert soup_main([str(prev / "weights.safetensors"), str(run / "weights.safetensors"), "--out", str(soup2)]) == 0
    assert ship.main(["--soup", str(soup2), "--ingredients", str(prev), str(run)]) == 0
    card = (tmp_path / "assets" / "MODEL_CARD.md").read_text()
    assert (f"| ingredient `prev` | sha256 `{sha256(prev / 'weights.safetensors')[:12]}...`; the model shipped "
            "before, the mean (model soup) of 2 fine-tunes") in card and "15 steps, 134 images seen" not in card
    assert "; 8 steps, 64 images seen, 0.03 h of training in all (its card: the git history of this file) |" in card
    assert "| ingredient `r2` | sha256 " in card and "\n# prev: the model shipped before (sha256 " in card
    assert "BatchNorm statistics the ones every ingredient has, kept |" in card
    assert "| in all | 19 steps, 166 images seen, 1.05 h of training |" in card       # 7 + 8 + 4, 70 + 64 + 32
    (run / "log.jsonl").unlink()                               # a fine-tune must bring its log
    with pytest.raises(SystemExit, match="r2/log.jsonl: not found or empty"):
        ship.main(["--soup", str(soup2), "--ingredients", str(prev), str(run)])


def test_card_lines_for_a_lineage_and_a_schedule():
    """The model card's totals add up every generation of a fine-tuning chain (a GPU continuation of a widened
    CPU model has two), its lr line names a cosine schedule once instead of one phase per step, and a snapshot
    average names its spacing."""
    from prn_blender.train.ship import _chain_totals, _lr_text, averaged_text
    assert averaged_text([2300, 2400, 2500, 2543]) == ("mean of 4 snapshots, steps 2300-2543 (every 100 and the "
                                                       "last step)", 100)     # a --max-time run ends off the grid
    assert averaged_text([500, 1000, 1500]) == ("mean of 3 snapshots, steps 500-1500 (every 500)", 500)
    grand = {"steps": 46000, "images_seen": 368000, "wall_time_s": 3600.0, "parent": None}
    parent = {"steps": 4102, "images_seen": 262528, "wall_time_s": 360.0, "parent": grand}
    assert _chain_totals(parent) == (50102, 630528, 3960.0) and _chain_totals(None) == (0, 0, 0.0)
    assert _lr_text({"schedule": "cosine", "lr": 1e-4}, [(1, 1e-6), (2, 2e-6)], 300, 4102) == \
        "linear warm-up over the first 300 steps, then cosine from 0.0001 to 0 over 4102 steps"
    assert _lr_text({"lr": 1e-4}, [(1, 1e-4), (9, 5e-5)], 0, 10) == "0.0001 from step 1, 5e-05 from step 9"


def test_training_curve_with_ancestor_runs(tmp_path):
    """ship's training curve draws the runs a model was fine-tuned from before its own run; the summary is the
    run's own (a resumed run's re-logged steps count once)."""
    import json

    from prn_blender.train.ship import plot_curve
    for name, n in (("a", 5), ("b", 3)):
        (tmp_path / name).mkdir()
        recs = [{"step": s, "loss": 1.0 / s, "lr": 1e-4, "samples": 8 * s, "elapsed": float(s)}
                for s in range(1, n + 1)]
        (tmp_path / name / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs + recs[-1:]) + "\n")
    out = tmp_path / "curve.png"
    c = plot_curve(tmp_path / "b/log.jsonl", out, ancestors=[tmp_path / "a/log.jsonl"])
    assert out.stat().st_size > 0 and (c["steps"], c["samples"], c["elapsed_s"]) == (3, 24, 3.0)
    assert c["final_loss_mean"] == pytest.approx(1 / 3)



def test_progress_bar_total_of_a_time_boxed_run():
    """The progress bar's total (hence its ETA): --steps, or the step a --max-time run reaches its deadline at the
    pace so far, whichever comes first; unknown until a step of a time-boxed run is timed; never behind the run."""
    from prn_blender.train.loop import expected_last_step, parse_args
    steps = parse_args(["--out", "r", "--steps", "500"])
    boxed = parse_args(["--out", "r", "--max-time", "100"])
    both = parse_args(["--out", "r", "--max-time", "100", "--steps", "150"])
    assert expected_last_step(steps, 10, 0, 5.0) == 500
    assert expected_last_step(boxed, 0, 0, 0.0) is None
    assert expected_last_step(boxed, 30, 10, 10.0) == 30 + 180          # 2 steps/s for the 90 s left
    assert expected_last_step(both, 30, 10, 10.0) == 150
    assert expected_last_step(boxed, 40, 10, 120.0) == 40                 # past the deadline: this step is the last


def test_train_step_limit_defaults():
    """train.py stops at step 1000 by default, and has no step limit when only --max-time bounds the run."""
    from prn_blender.train.loop import parse_args
    assert parse_args(["--out", "r"]).steps == 1000
    assert parse_args(["--out", "r", "--max-time", "60"]).steps is None
    assert parse_args(["--out", "r", "--max-time", "60", "--steps", "5"]).steps == 5
    with pytest.raises(SystemExit):                       # a negative time box: refused, not one step trained
        parse_args(["--out", "r", "--max-time", "-5"])


def test_tf_name_map_covers_official_tensors(shared):
    names = {}
    for line in (shared / "prnet/256_256_resfcn256_weight.index.tensors.tsv").read_text().splitlines():
        p = line.split("\t")
        if len(p) < 3 or "Adam" in p[0] or "power" in p[0] or p[0].startswith("#"):
            continue
        names[p[0]] = [int(v) for v in p[2].strip("[]").split(",") if v.strip()]
    m = ResFCN256(16)
    mp = tf_name_map(m)
    assert len(names) == 245 and set(mp) == set(names)
    sd = m.state_dict()
    for tf, (pt, kind) in mp.items():
        shape = names[tf] if kind == "vec" else [names[tf][i] for i in (3, 2, 0, 1)]
        assert list(sd[pt].shape) == shape, tf
    # every trainable tensor and BN statistic is mapped exactly once
    assert sorted(pt for pt, _ in mp.values()) == sorted(k for k in sd if not k.endswith("num_batches_tracked"))


def test_layout_asset_consistent():
    lay = load_layout()
    lay.validate()
    assert lay.name == "ict-face-v2"
    assert lay.triangles.shape[1] == 3 and len(lay.triangles) > lay.n_vertices
    # triangles face outward (+z) on the front of the canonical face
    v, t = lay.canonical, lay.triangles
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    front = v[t].mean(1)[:, 2] > np.percentile(v[:, 2], 60)
    assert (n[front, 2] > 0).mean() > 0.95
    w = lay.weight_mask("paper")
    assert w.max() == 1 and w[lay.kpt_xy[:, 1], lay.kpt_xy[:, 0]].min() == 1
    assert set(np.unique(np.round(w[lay.mask] * 16, 3))) <= {0.0, 3.0, 4.0, 16.0}


def _canonical_posmap(lay, R=None, s=3.0, t=(128.0, 120.0, 0.0)):
    c = lay.canonical.astype(np.float64) @ (np.eye(3) if R is None else R).T
    img = np.stack([c[:, 0] * s + t[0], -c[:, 1] * s + t[1], c[:, 2] * s + t[2]], 1)
    pos = np.zeros((RESOLUTION * RESOLUTION, 3))
    pos[lay.face_ind] = img
    return pos.reshape(RESOLUTION, RESOLUTION, 3), img


def test_position_map_round_trip_exact():
    lay = load_layout()
    pos, img = _canonical_posmap(lay)
    np.testing.assert_array_equal(lay.vertices(pos), img)
    np.testing.assert_array_equal(lay.landmarks(pos), img[lay.kpt_vertex])


def test_pose_recovers_rotation():
    from prn_blender.synth.render import _rotation
    lay = load_layout()
    yaw, pitch, roll = 35.0, -12.0, 8.0
    R = _rotation(*(torch.tensor([np.radians(a)]) for a in (yaw, pitch, roll)))[0].double().numpy()
    _, img = _canonical_posmap(lay, R)
    pose, resid = estimate_pose(img.astype(np.float32), lay.canonical)
    assert resid < 1e-4
    assert abs(pose.yaw - yaw) < 0.01 and abs(pose.pitch - pitch) < 0.01 and abs(pose.roll - roll) < 0.01


def test_crop_uncrop_round_trip():
    rng = np.random.default_rng(0)
    pts = rng.uniform(50, 400, (68, 3))
    for crop in (crop_from_box((103.2, 87.9, 311.4, 345.1)), crop_from_landmarks(pts),
                 crop_from_landmarks(pts, angle=-37.0)):
        back = crop.to_image(crop.to_crop(pts))
        assert np.abs(back - pts).max() < 0.01
        pos = crop.to_crop(rng.uniform(0, 450, (RESOLUTION, RESOLUTION, 3)))
        img_space = uncrop_position_map(pos.astype(np.float32), crop)
        assert np.abs(crop.to_crop(img_space) - pos).max() < 0.01
    # the paper's constants
    c = crop_from_box((0, 0, 100, 100))
    assert c.center == (50.0, 64.0) and c.size == 158.0
    assert crop_from_landmarks(np.array([[0, 0], [100, 100.0]])).size == 160.0
    assert crop_from_landmarks(np.full((68, 2), 40.0)).size == 1.0       # no box: a 1 px crop, never a 0 px one


def test_warp_places_pixels_by_transform():
    img = np.zeros((300, 400, 3), np.float32)
    img[150, 200] = 1.0
    for angle in (0.0, 25.0):
        crop = crop_from_landmarks(np.array([[150.0, 100], [250, 200]]), angle=angle)
        cx, cy = crop.to_crop(np.array([[200.0, 150.0]]))[0]
        out = warp(img, crop)
        yy, xx = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
        assert abs(xx - cx) <= 1 and abs(yy - cy) <= 1


def test_turned_crop_is_the_upright_faces_crop_turned():
    """A crop turned by ``angle`` (CropTransform.angle) sees a face rolled by ``angle`` in the image exactly as the
    axis-aligned crop sees the upright face: same side, centre moved with the face, the eye line level in the crop;
    at angle 0 the affine is the PRNet one."""
    rng = np.random.default_rng(1)
    up = np.c_[rng.uniform(100, 200, (68, 2)), rng.uniform(-20, 20, 68)]
    up[36:42, 1], up[42:48, 1] = 130.0, 130.0                                # level eyes
    a = math.radians(28.0)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pivot = np.array([170.0, 160.0])
    turned = up.copy()
    turned[:, :2] = (up[:, :2] - pivot) @ R.T + pivot                      # the face rolled by +28 deg (y down)
    c0, c1 = crop_from_landmarks(up), crop_from_landmarks(turned, angle=28.0)
    assert c1.size == c0.size and c1.angle == 28.0
    np.testing.assert_allclose(c1.center, (np.asarray(c0.center) - pivot) @ R.T + pivot, atol=1e-9)
    np.testing.assert_allclose(c1.to_crop(turned), c0.to_crop(up), atol=1e-9)
    x0, y0 = c0.center[0] - c0.size / 2, c0.center[1] - c0.size / 2
    np.testing.assert_allclose(c0.matrix, [[c0.scale, 0, -x0 * c0.scale], [0, c0.scale, -y0 * c0.scale]], atol=1e-12)
    assert c1.resized(2.0) == CropTransform(c1.center, 2 * c1.size, c1.resolution, 28.0)


def jpeg_with_orientation(jpeg: bytes, orientation: int, order: str = "MM") -> bytes:
    """JPEG bytes with an EXIF APP1 segment whose IFD0 holds only the orientation tag."""
    import struct
    e = ">" if order == "MM" else "<"
    tiff = (order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(e + "I", 0))
    seg = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(seg) + 2) + seg + jpeg[2:]


def test_exif_orientation_and_upright_turns(tmp_path):
    """The EXIF orientation is read from the file's start (either byte order), pixels stay as stored, and the turns
    make them what OpenCV's own EXIF handling shows; mirrored orientations, other formats and broken files: 0."""
    import cv2

    from prn_blender.core.image_io import exif_orientation, upright_turns
    img = (np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    for o, k in ((1, 0), (3, 2), (6, 3), (8, 1), (2, 0), (5, 0)):
        for order in ("MM", "II"):
            data = jpeg_with_orientation(buf.tobytes(), o, order)
            assert exif_orientation(data) == o
            p = tmp_path / f"o{o}{order}.jpg"
            p.write_bytes(data)
            assert upright_turns(p) == k, (o, order)
            raw = load_image(p)
            assert raw.shape == (40, 64, 3)                           # stored pixels, as Blender shows them
            shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            if o in (1, 3, 6, 8):
                np.testing.assert_allclose(np.rot90(raw, k), shown / 255.0, atol=1e-6)
    assert exif_orientation(buf.tobytes()) == 1 and exif_orientation(b"\x89PNG....") == 1
    (tmp_path / "cut.jpg").write_bytes(jpeg_with_orientation(buf.tobytes(), 6)[:30])
    assert upright_turns(tmp_path / "cut.jpg") == 0 and upright_turns(tmp_path / "missing.jpg") == 0


def test_turn_crop_sees_the_same_pixels():
    """A crop of the image turned by k quarter turns, turned back onto the image, cuts out the same pixels."""
    from prn_blender.core.crop import turn_crop
    img = np.random.default_rng(2).random((60, 90, 3)).astype(np.float32)
    for k in (1, 2, 3):
        c = CropTransform((30.0, 41.0), 33.0)
        a = warp(np.ascontiguousarray(np.rot90(img, k)), c)
        b = warp(img, turn_crop(c, k, img.shape))
        assert np.abs(a - b).mean() < 2e-3 and np.abs(a - b).max() < 0.05, k     # interpolation rounding only
        assert np.abs(a - warp(img, c)).mean() > 0.1                             # the unturned crop differs
    assert turn_crop(c, 4, img.shape) is c


@pytest.mark.parametrize("kind", ["u8", "u16", "float", "gray", "rgba"])
def test_image_array_inputs(kind):
    rng = np.random.default_rng(1)
    base = rng.random((40, 50, 3)).astype(np.float32)
    arr = {"u8": (base * 255).astype(np.uint8), "u16": (base * 65535).astype(np.uint16), "float": base,
           "gray": (base[..., 0] * 255).astype(np.uint8),
           "rgba": np.concatenate([(base * 255).astype(np.uint8), np.full((40, 50, 1), 255, np.uint8)], 2)}[kind]
    out = load_image(arr)
    assert out.shape == (40, 50, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_image_bad_and_odd_files(tmp_path):
    import cv2
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(empty)
    good = np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.tobytes()[:40])
    with pytest.raises(ImageError, match="decodable"):
        load_image(trunc)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), good[:1, :1])
    with pytest.raises(ImageError, match="too small"):
        load_image(tiny)
    p16 = tmp_path / "deep.png"
    cv2.imwrite(str(p16), (good.astype(np.uint16) * 257))
    assert load_image(p16).shape == (64, 64, 3)
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), good[..., 0])
    assert load_image(gray).shape == (64, 64, 3)
    uni = tmp_path / "visage_é_顔.jpg"
    uni.write_bytes(buf.tobytes())
    assert load_image(uni).shape == (64, 64, 3)
    cmyk = tmp_path / "cmyk.jpg"
    from PIL import Image
    Image.fromarray(good).convert("CMYK").save(cmyk)
    assert load_image(cmyk).shape == (64, 64, 3)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.jpg")


@pytest.mark.shared
def test_default_detector_finds_all_aflw_faces(shared):
    from prn_blender.core.detect import make_detector
    det = make_detector("auto")
    assert det.name == "yuface"
    imgs = sorted((shared / "aflw2000-3d/images").glob("*.jpg"))
    assert len(imgs) == 16
    for p in imgs:
        boxes = det(load_image(p))
        assert len(boxes) >= 1, p.name


def test_bn_recalibration_uses_exact_average():
    import torch.nn.functional as F
    from prn_blender.train.loop import recalibrate_bn
    torch.manual_seed(0)
    m = ResFCN256(2).eval()
    batches = [torch.rand(2, 3, 256, 256) * (i + 1) for i in range(3)]
    recalibrate_bn(m, batches, amp_dtype=None)
    with torch.no_grad():
        means = [m.conv0.conv(F.pad(b, (1, 2, 1, 2))).mean((0, 2, 3)) for b in batches]
    torch.testing.assert_close(m.conv0.bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert m.conv0.bn.momentum == 0.01 and not m.training
