"""Blender layer: scene building, keying, shape keys / mesh cache, rig, operators, panel, modal stepping.
Synthetic FaceResults are built from the shipped layout's canonical shape (no weights needed)."""
from __future__ import annotations

import os
import pathlib
from types import SimpleNamespace

import numpy as np
import pytest

from prn_blender.blender.convert import image_to_blender, pose_to_blender
from prn_blender.core.layout import load_layout
from prn_blender.core.pose import estimate_pose
from prn_blender.core.result import CropTransform, FaceResult

pytestmark = pytest.mark.bpy
W, H = 640, 480


def fake_face(t: float = 0.0) -> FaceResult:
    lay = load_layout()
    a, b = np.radians(10.0 + 5 * t), np.radians(3.0 * t)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    c = lay.canonical.astype(np.float64).copy()
    c[:, 1] += np.where(c[:, 1] < -3, -0.5 * t, 0.0)             # "open the jaw" a little: non-rigid motion
    p = 8.0 * c @ (rx @ ry).T + np.array([W / 2 + 4 * t, -H / 2 - 2 * t, 150.0])
    v = (p * [1, -1, 1]).astype(np.float32)
    pose, _ = estimate_pose(v, lay.canonical)
    tex = np.random.default_rng(0).random((256, 256, 3)).astype(np.float32)
    return FaceResult(position_map=np.zeros((256, 256, 3), np.float32), vertices=v, triangles=lay.triangles,
                      uvs=lay.uvs, landmarks=v[lay.kpt_vertex], pose=pose, colors=np.zeros_like(v), texture=tex,
                      texture_mask=np.ones((256, 256), bool), depth=np.zeros((H, W), np.float32),
                      crop=CropTransform((W / 2, H / 2), 200.0), confidence=1.0, layout=lay.name, image_size=(W, H))


class FakeRec:
    """core.reconstruct.FaceReconstructor's stand-in for the scene tests: ``faces`` (default: one fake face) in every
    image, or the error ``fail``; ``pick`` ranks them as the real one does (result.largest_first)."""
    def __init__(self, fail=None, faces=None):
        self.fail, self.faces = fail, faces

    def __call__(self, image, **kw):
        if self.fail:
            raise RuntimeError(self.fail)
        return list(self.faces) if self.faces is not None else [fake_face()]

    def pick(self, image, rank=1):
        from prn_blender.core.result import largest_first
        faces = largest_first(self(image))
        if rank > len(faces):
            raise RuntimeError(f"the image shows {len(faces)} face(s); face {rank} was asked for")
        return faces[rank - 1], len(faces)


@pytest.fixture
def addon(bpy_empty, monkeypatch, tmp_path):
    from prn_blender.blender import operators, register
    register()
    monkeypatch.setattr(operators, "get_reconstructor", lambda context, weights="", video=False: FakeRec())
    img = tmp_path / "portrait.png"
    import cv2
    cv2.imwrite(str(img), np.full((H, W, 3), 128, np.uint8))
    return SimpleNamespace(bpy=bpy_empty, ops=operators, image=str(img), tmp=tmp_path)


def fake_video(n, none_at=()):
    for i in range(n):
        yield SimpleNamespace(index=i, time_s=i / 25.0, face=None if i in none_at else fake_face(i / 4))


def names(bpy):
    return {k: sorted(x.name for x in getattr(bpy.data, k)) for k in ("objects", "meshes", "materials", "images",
                                                                      "collections", "actions", "cameras")}


def test_build_face_structure(bpy_empty, tmp_path):
    from prn_blender.blender import scene
    r = fake_face()
    coll = scene.build_face(bpy_empty.context, r, str(tmp_path / "x.png"))
    objs = scene.objects_by_role(coll)
    lay = load_layout()
    me = objs["mesh"].data
    assert len(me.vertices) == lay.n_vertices and len(me.polygons) == len(lay.triangles)
    assert "UVMap" in me.uv_layers and me.polygons[0].use_smooth
    uv = np.zeros(len(me.loops) * 2, np.float32)
    me.uv_layers["UVMap"].data.foreach_get("uv", uv)
    assert np.allclose(uv.reshape(-1, 2)[:3], lay.uvs[lay.triangles[0]], atol=1e-6)
    assert [o.name for o in objs["landmarks"]][:2] == ["lm_00_jaw", "lm_01_jaw"]
    assert objs["landmarks"][36].name == "lm_36_eye_r" and len(objs["landmarks"]) == 68
    assert all(o.parent == objs["root"] for o in objs["landmarks"])
    k = coll["prn_k"]
    co = np.zeros(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    assert np.allclose(co.reshape(-1, 3), image_to_blender(r.vertices, (W, H), k), atol=1e-6)
    img = me.materials[0].node_tree.nodes["Image Texture"].image
    assert img.packed_file is not None and img.size[:] == (256, 256)
    # head pose maps the canonical shape onto the vertices; camera is orthographic and frames the photo
    bpy_empty.context.view_layer.update()
    M = np.array(objs["head"].matrix_world)
    c = np.c_[lay.canonical[:50], np.ones(50)]
    assert np.allclose((c @ M.T)[:, :3], image_to_blender(r.vertices[:50], (W, H), k), atol=1e-4)
    cam = objs["camera"]
    assert cam.data.type == "ORTHO" and np.isclose(cam.data.ortho_scale, W * k)
    assert bpy_empty.context.scene.camera == cam


def test_rebuild_replaces(bpy_empty, tmp_path):
    from prn_blender.blender import scene
    src = str(tmp_path / "same.png")
    scene.build_face(bpy_empty.context, fake_face(), src)
    before = names(bpy_empty)
    scene.build_face(bpy_empty.context, fake_face(1.0), src)
    assert names(bpy_empty) == before
    assert len(bpy_empty.data.collections) == 1 and len(bpy_empty.data.meshes) == 1


def test_video_keys_shape_keys_and_rig(bpy_empty, tmp_path):
    from prn_blender.blender import operators, scene
    from prn_blender.blender.rig import bake_rig, generate_rig
    ctx = bpy_empty.context
    n = 6
    job = operators.VideoJob(str(tmp_path / "clip.mp4"), fake_video(n, none_at=(3,)), n, 25.0,
                             mesh_mode="SHAPE_KEYS")
    job.run_all()
    coll = _finish_without_movie(job, ctx, monkeypatch_clip=True)
    objs = scene.objects_by_role(coll)
    k = coll["prn_k"]
    faces = [fake_face(i / 4) for i in range(n)]
    faces[3] = faces[2]                                             # a frame without face holds the previous one
    lm = image_to_blender(np.stack([f.landmarks for f in faces]), (W, H), k)
    o = objs["landmarks"][30]
    fcs = {(fc.data_path, fc.array_index): fc for fc in _fcurves(o)}
    co = np.zeros(2 * n, np.float32)
    fcs[("location", 0)].keyframe_points.foreach_get("co", co)
    assert len(fcs[("location", 0)].keyframe_points) == n          # one key per processed frame
    assert np.allclose(co[0::2], np.arange(n) + 1)
    assert np.allclose(co[1::2], lm[:, 30, 0], atol=1e-6)
    for ax in range(3):
        assert np.isclose(fcs[("location", ax)].evaluate(4), lm[3, 30, ax], atol=1e-6)
    head_paths = {fc.data_path for fc in _fcurves(objs["head"])}
    assert {"location", "rotation_euler", "scale"} <= head_paths
    scene_ = ctx.scene
    scene_.frame_set(5)                                             # video frame 4
    M = np.array(objs["head"].matrix_world)
    P = pose_to_blender(faces[4].pose.rotation, faces[4].pose.translation, faces[4].pose.scale, (W, H), k)
    assert np.allclose(M, P, atol=1e-5)
    # shape keys evaluate to the frame's mesh
    dg = ctx.evaluated_depsgraph_get()
    ev = objs["mesh"].evaluated_get(dg).to_mesh()
    got = np.zeros(len(ev.vertices) * 3, np.float32)
    ev.vertices.foreach_get("co", got)
    objs["mesh"].evaluated_get(dg).to_mesh_clear()
    assert np.allclose(got.reshape(-1, 3), image_to_blender(faces[4].vertices, (W, H), k), atol=1e-5)
    assert len(objs["mesh"].data.shape_keys.key_blocks) == n + 1
    # rig follows the empties, then bakes
    arm = generate_rig(ctx, coll)
    for f in (2, 5):
        scene_.frame_set(f)
        pb = arm.pose.bones["nose_tip"]
        world = np.array(arm.matrix_world @ pb.head)
        assert np.allclose(world, lm[f - 1, 30], atol=1e-5)
        hb = np.array((arm.matrix_world @ arm.pose.bones["head"].matrix).translation)
        assert np.allclose(hb, np.array(objs["head"].matrix_world.translation), atol=1e-5)
    scene_.frame_set(4)
    before = np.array(arm.matrix_world @ arm.pose.bones["brow_in_l"].head)
    assert bake_rig(ctx, arm) == n
    assert all(len(pb.constraints) == 0 for pb in arm.pose.bones)
    scene_.frame_set(4)
    assert np.allclose(np.array(arm.matrix_world @ arm.pose.bones["brow_in_l"].head), before, atol=1e-4)
    # rebuilding the same source replaces everything (rig included)
    job2 = operators.VideoJob(str(tmp_path / "clip.mp4"), fake_video(3), 3, 25.0)
    job2.run_all()
    coll2 = _finish_without_movie(job2, ctx, monkeypatch_clip=True)
    assert len(bpy_empty.data.collections) == 1 and coll2.name == "clip"
    assert len(bpy_empty.data.meshes) == 1 and len(bpy_empty.data.armatures) == 0
    assert len([o for o in bpy_empty.data.objects if o.name.startswith("lm_")]) == 68
    # another face of the same clip is a build of its own, with its own mesh cache file name
    job3 = operators.VideoJob(str(tmp_path / "clip.mp4"), fake_video(3), 3, 25.0, face=2, mesh_mode="MESH_CACHE")
    job3.run_all()
    coll3 = _finish_without_movie(job3, ctx, monkeypatch_clip=True)
    assert coll3.name == "clip_face2" and sorted(c.name for c in bpy_empty.data.collections) == ["clip", "clip_face2"]
    assert os.path.basename(job3.cache_file) == "clip_face2_prn.pc2"


def test_mesh_cache_mode(bpy_empty, tmp_path):
    from prn_blender.blender import operators, scene
    ctx = bpy_empty.context
    bpy_empty.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    job = operators.VideoJob(str(tmp_path / "long.mp4"), fake_video(5), 5, 30.0, mesh_mode="AUTO",
                             shape_key_max_frames=3)
    job.run_all()
    coll = _finish_without_movie(job, ctx, monkeypatch_clip=True)
    assert job.used_mode == "MESH_CACHE" and os.path.isfile(job.cache_file)
    objs = scene.objects_by_role(coll)
    assert objs["mesh"].modifiers[0].type == "MESH_CACHE" and objs["mesh"].data.shape_keys is None
    k = coll["prn_k"]
    ctx.scene.frame_set(4)
    dg = ctx.evaluated_depsgraph_get()
    ev = objs["mesh"].evaluated_get(dg).to_mesh()
    got = np.zeros(len(ev.vertices) * 3, np.float32)
    ev.vertices.foreach_get("co", got)
    objs["mesh"].evaluated_get(dg).to_mesh_clear()
    assert np.allclose(got.reshape(-1, 3), image_to_blender(fake_face(3 / 4).vertices, (W, H), k), atol=1e-5)


def _fcurves(obj):
    act = obj.animation_data.action
    if hasattr(act, "fcurves") and not hasattr(act, "layers"):
        return list(act.fcurves)
    try:
        return list(act.fcurves)
    except AttributeError:   # Blender 5.0: channelbags
        return [fc for layer in act.layers for strip in layer.strips for cb in strip.channelbags
                for fc in cb.fcurves]


def _finish_without_movie(job, ctx, monkeypatch_clip):
    """finish() with the synthetic (nonexistent) movie: the camera background clip is skipped."""
    from prn_blender.blender import scene
    real = scene._build

    def build(context, b, result, image_path, name, k, movie_path, set_cam):
        return real(context, b, result, None, name, k, None, set_cam)
    scene._build = build
    try:
        return job.finish(ctx)
    finally:
        scene._build = real


def test_image_operator_and_failure_leaves_scene(addon):
    bpy = addon.bpy
    assert bpy.ops.prn.reconstruct_image(filepath=addon.image) == {"FINISHED"}
    assert "portrait" in bpy.data.collections
    before = names(bpy)
    with pytest.raises(RuntimeError, match="image not found"):
        bpy.ops.prn.reconstruct_image(filepath=str(addon.tmp / "nope.png"))
    assert names(bpy) == before
    addon.ops.get_reconstructor = lambda context, weights="", video=False: FakeRec(fail="no face found in the image")
    with pytest.raises(RuntimeError, match="no face found"):
        bpy.ops.prn.reconstruct_image(filepath=addon.image)
    assert names(bpy) == before
    # a failure during the build rolls back and keeps the previous build
    from prn_blender.blender import scene
    addon.ops.get_reconstructor = lambda context, weights="", video=False: FakeRec()
    real = scene.face_material
    scene.face_material = lambda *a: (_ for _ in ()).throw(ValueError("boom"))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            bpy.ops.prn.reconstruct_image(filepath=addon.image)
    finally:
        scene.face_material = real
    assert names(bpy) == before
    with pytest.raises(RuntimeError, match="video not found"):
        bpy.ops.prn.reconstruct_video(filepath=str(addon.tmp / "nope.mp4"))
    assert names(bpy) == before
    assert bpy.ops.prn.generate_rig() == {"FINISHED"}
    assert bpy.ops.prn.bake_rig() == {"FINISHED"}


def test_image_operator_builds_the_chosen_face_of_a_group_photo(addon, monkeypatch):
    """A photo with several faces: the scene's Face counts them largest first (the detector orders by score); each
    face number is a build of its own, rebuilt in place; a number past the faces found fails and changes nothing."""
    import dataclasses
    bpy = addon.bpy
    from prn_blender.blender import scene as sc

    def scaled(f, k):
        c = f.landmarks.mean(0)
        return dataclasses.replace(f, landmarks=(f.landmarks - c) * k + c, vertices=(f.vertices - c) * k + c)
    small, big = scaled(fake_face(), 0.5), fake_face()
    monkeypatch.setattr(addon.ops, "get_reconstructor", lambda *a, **k: FakeRec(faces=[small, big]))
    s = bpy.context.scene.prn_face

    def width(coll):
        lm = np.array([o.location[:] for o in sc.objects_by_role(coll)["landmarks"]])
        return float(np.ptp(lm[:, 0]))
    assert bpy.ops.prn.reconstruct_image(filepath=addon.image) == {"FINISHED"}
    s.face = 2
    assert bpy.ops.prn.reconstruct_image(filepath=addon.image) == {"FINISHED"}
    one, two = bpy.data.collections["portrait"], bpy.data.collections["portrait_face2"]
    assert width(one) > 1.5 * width(two)
    assert bpy.ops.prn.reconstruct_image(filepath=addon.image) == {"FINISHED"}      # face 2 again: replaced
    assert sorted(c.name for c in bpy.data.collections) == ["portrait", "portrait_face2"]
    before = names(bpy)
    s.face = 3
    with pytest.raises(RuntimeError, match=r"the image shows 2 face\(s\); face 3 was asked for"):
        bpy.ops.prn.reconstruct_image(filepath=addon.image)
    assert names(bpy) == before
    from prn_blender.blender.pipeline import run_blend
    assert run_blend(addon.image, addon.tmp / "x.blend", face=0) == 1 and not (addon.tmp / "x.blend").exists()


class Recorder:
    def __init__(self, calls):
        self.calls = calls
        self.active = True

    def __getattr__(self, name):
        def f(*a, **kw):
            self.calls.append((name, a, kw))
            return Recorder(self.calls) if name in ("box", "row", "column", "split") else SimpleNamespace()
        return f


def test_panel_draw(addon):
    from prn_blender.blender.panel import PRN_PT_reconstruct
    calls = []
    PRN_PT_reconstruct.draw(SimpleNamespace(layout=Recorder(calls)), addon.bpy.context)
    ops = {a[0] for n, a, kw in calls if n == "operator"}
    assert {"prn.reconstruct_image", "prn.reconstruct_video", "prn.generate_rig", "prn.bake_rig"} <= ops
    assert PRN_PT_reconstruct.bl_space_type == "VIEW_3D" and PRN_PT_reconstruct.bl_category == "Face"


class FakeWM:
    def __init__(self):
        self.progress = []

    def progress_update(self, v):
        self.progress.append(v)

    def progress_end(self):
        pass

    def event_timer_remove(self, t):
        pass


def test_modal_esc_keeps_frames(addon, monkeypatch):
    from prn_blender.blender import operators, scene
    bpy = addon.bpy
    job = operators.VideoJob(str(addon.tmp / "take.mp4"), fake_video(10), 10, 25.0)
    reports = []
    op = SimpleNamespace(_job=job, _timer=object(), report=lambda t, m: reports.append((t, m)))
    ctx = SimpleNamespace(scene=bpy.context.scene, view_layer=bpy.context.view_layer, window_manager=FakeWM(),
                          workspace=None)
    operators._JOBS["video"] = job
    timer, esc, move = (SimpleNamespace(type=t) for t in ("TIMER", "ESC", "MOUSEMOVE"))
    monkeypatch.setattr(scene, "_build", _no_movie_build(scene._build))
    assert operators.video_modal(op, ctx, move) == {"PASS_THROUGH"}
    for _ in range(3):
        assert operators.video_modal(op, ctx, timer) == {"RUNNING_MODAL"}
    assert ctx.window_manager.progress == [1, 2, 3]
    assert operators.video_modal(op, ctx, esc) == {"FINISHED"}, reports
    assert not operators.video_running()
    coll = bpy.data.collections["take"]
    head = scene.objects_by_role(coll)["head"]
    fc = next(f for f in _fcurves(head) if f.data_path == "location")
    assert len(fc.keyframe_points) == 3 and list(coll["prn_frames"])[:2] == [1, 3]


def _no_movie_build(real):
    def build(context, b, result, image_path, name, k, movie_path, set_cam):
        return real(context, b, result, None, name, k, None, set_cam)
    return build


def test_video_runs_the_wide_view_on_key_frames(bpy_empty, monkeypatch, tmp_path):
    """Photos run the periphery view in every call; video's reconstructor does not, and its frames ask for it on key
    frames (every VIDEO_WIDE_EVERY) unless the scene's Wide View is off; the CLI's blend --no-wide-view turns it off.
    Photos' re-crop runs the blurred-surround views (SURROUND_BLUR) unless that preference is off, video's
    detections do not. The Refine Mouth preference reaches the reconstructor."""
    from prn_blender.blender import operators, register
    from prn_blender.blender.pipeline import run_blend
    from prn_blender.core.constants import SURROUND_BLUR, VIDEO_WIDE_EVERY
    register()
    seen = []
    monkeypatch.setattr(operators, "make_reconstructor",
                        lambda *a, **k: seen.append((k["periphery"], k["surround_blur"], k["refine"])) or FakeRec())
    ctx = bpy_empty.context
    operators.get_reconstructor(ctx)
    operators.get_reconstructor(ctx, video=True)
    assert seen == [(True, SURROUND_BLUR, False), (False, None, False)] and SURROUND_BLUR > 1
    from prn_blender.blender.preferences import Preferences
    monkeypatch.setattr(operators, "get_preferences", lambda c: Preferences(surround_blur=False, refine=True))
    operators.get_reconstructor(ctx)                  # Preferences -> Blurred Surround (Photos) off, Refine Mouth on
    assert seen[-1] == (True, None, True)
    s = ctx.scene.prn_face
    assert s.wide_view and operators.video_wide_every(s) == VIDEO_WIDE_EVERY > 1
    s.wide_view = False
    assert operators.video_wide_every(s) == 0
    from prn_blender.__main__ import build_parser
    a = build_parser().parse_args(["blend", "clip.mp4", "--out", "x.blend", "--no-wide-view"])
    assert not a.wide_view and build_parser().parse_args(["blend", "clip.mp4", "--out", "x.blend"]).wide_view
    import cv2
    clip = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    w.write(np.zeros((64, 64, 3), np.uint8))
    w.release()
    asked = []

    def stop(path, rec, **kw):
        asked.append(kw["wide_every"])
        raise RuntimeError("stop here")
    monkeypatch.setattr(operators, "open_video", stop)
    for wide in (True, False):
        assert run_blend(clip, tmp_path / "x.blend", wide_view=wide) == 1
    assert asked == [VIDEO_WIDE_EVERY, 0] and not (tmp_path / "x.blend").exists()


def test_blender_shows_a_sideways_clip_as_the_tracker_reads_it(bpy_empty, sideways_clip):
    """Blender 4.5 applies a clip's rotation metadata: the movie clip it shows behind the keyed face has the size
    and the pixels of the frames the add-on tracks (open_video: upright), so landmarks line up with the footage."""
    import bpy

    from prn_blender.blender.operators import BLENDER_ROTATES_VIDEO, open_video
    path, up = sideways_clip
    assert BLENDER_ROTATES_VIDEO                                              # the pinned Blender is 4.5
    info, _ = open_video(str(path), None)
    assert tuple(bpy.data.movieclips.load(str(path)).size) == info.size == (96, 128)
    img = bpy.data.images.load(str(path))
    img.source = "MOVIE"
    w, h = img.size
    px = np.array(img.pixels[:]).reshape(h, w, 4)[::-1, :, :3]            # Blender's rows run bottom-up
    assert px.shape == up.shape and np.abs(px * 255 - up).mean() < 8


def test_video_opencv_cannot_decode_is_read_through_blender(bpy_empty, monkeypatch, tmp_path):
    """An AV1 clip (OpenCV's FFmpeg has no AV1 decoder, Blender has one) is re-encoded by Blender into the scratch
    folder and tracked from there: every frame, same size, same pixels within compression; the user's scenes are
    untouched. A file neither can read keeps core.video's error, with Blender's reason added."""
    import bpy
    import cv2

    from prn_blender.blender import operators, transcode
    from prn_blender.core.video import VideoError, video_info
    src = str(tmp_path / "src.avi")
    from skimage import data
    rng = np.random.default_rng(0)
    base = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
    frames = [(base * (0.5 + 0.1 * i)).astype(np.uint8) for i in range(5)]          # each frame its own brightness
    vw = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (640, 480))
    for f in frames:
        vw.write(f)
    vw.release()
    monkeypatch.setattr(transcode, "CODEC", {"format": "MPEG4", "codec": "AV1", "constant_rate_factor": "HIGH"})
    (tmp_path / "enc").mkdir()
    av1 = tmp_path / "clip_av1.mp4"
    os.replace(transcode.transcode(src, str(tmp_path / "enc")), av1)
    monkeypatch.undo()
    with pytest.raises(VideoError, match="no decodable frame"):
        video_info(av1)
    scenes = [s.name for s in bpy.data.scenes]
    seen = []

    def rec(image, crop=None, **kw):
        seen.append(image)
        return []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (n, fps, size), it = operators.open_video(str(av1), rec, scratch=str(scratch))
    assert (n, fps, size) == (5, 24.0, (640, 480)) and [s.name for s in bpy.data.scenes] == scenes
    list(it)
    assert len(seen) == 5 and list(scratch.iterdir())
    # three lossy encodes (MJPG, AV1, H.264) and Blender's colour conversion, which alone shifts this clip by 1-2
    # levels (a lossless re-encode of the MJPG source: mean |diff| 1.4-2.2); the next frame is 12 levels away
    errs = [np.abs(im.astype(float) - cv2.cvtColor(f, cv2.COLOR_BGR2RGB)).mean() for im, f in zip(seen, frames)]
    assert max(errs) < 6, errs
    assert np.all(np.diff([im.mean() for im in seen]) > 8)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(rng.bytes(20000))
    with pytest.raises(VideoError, match="Blender cannot read it either"):
        operators.open_video(str(junk), rec, scratch=str(scratch))
    with pytest.raises(VideoError, match="not a readable video"):
        operators.open_video(str(junk), rec)
    assert [s.name for s in bpy.data.scenes] == scenes


def test_variable_frame_rate_clip_is_tracked_on_the_frames_blender_shows(bpy_empty, vfr_clip, tmp_path):
    """Blender plays a variable-frame-rate clip at a constant rate, repeating frames where the rate drops; read in
    order, its frames would fall behind the footage from the first slow stretch on (here by 10 frames). The add-on
    tracks Blender's re-encoded copy instead: frame i is what Blender shows at scene frame i + 1. A frame range
    re-encodes that range alone."""
    import bpy

    from prn_blender.blender.operators import blender_timing, open_video
    from prn_blender.core.video import VideoError, video_info
    path, times = vfr_clip
    info = video_info(path)
    assert (info.n_frames, info.fps) == (30, 22.5)                  # OpenCV: 30 frames, their average rate
    assert blender_timing(path) == (40, 30.0) and not bpy.data.movieclips
    seen = []

    def rec(image, crop=None, **kw):
        seen.append(round(float(image.mean()) / 8))
        return []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (n, fps, _), it = open_video(str(path), rec, scratch=str(scratch))
    list(it)
    assert (n, fps) == (40, 30.0)
    # the source frame on screen at time f / 30: the latest one whose time has come
    want = [max(i for i, t in enumerate(times) if t <= f / 30 + 1e-6) for f in range(40)]
    assert seen == want
    # a frame range: only that range is re-encoded; frame indices and times stay the clip's
    calls = []
    for f in scratch.iterdir():
        f.unlink()
    seen.clear()
    (n, fps, _), it = open_video(str(path), rec, start=13, end=31, step=4, scratch=str(scratch),
                                 progress=lambda done, total: calls.append((done, total)))
    got = list(it)
    assert (n, fps) == (40, 30.0) and [fr.index for fr in got] == [13, 17, 21, 25, 29]
    assert [fr.time_s for fr in got] == pytest.approx([i / 30 for i in (13, 17, 21, 25, 29)])
    assert seen == [want[i] for i in (13, 17, 21, 25, 29)]
    assert calls == [(k, 18) for k in range(1, 19)]
    assert video_info(scratch / "decoded.mkv").n_frames == 18
    with pytest.raises(VideoError, match="holds no frame of the clip's 40"):
        open_video(str(path), rec, start=40, scratch=str(scratch))
    assert not bpy.app.handlers.render_post and len(bpy.data.scenes) == 1
    seen.clear()
    (n, fps, _), it = open_video(str(path), rec)                    # no scratch folder: read in order
    list(it)
    assert (n, fps) == (30, 22.5) and seen == list(range(30))


def test_video_job_reencodes_only_its_frame_range_with_progress(addon, vfr_clip, monkeypatch):
    """The add-on's video job on a clip it must re-encode (variable frame rate) with a frame range: the re-encode
    covers the range alone, shows its progress on the window manager's counter, and the job's frame numbers are the
    clip's; a job that found no face says so (and which Face it looked for) and removes its scratch folder with the
    copy."""
    from prn_blender.blender import operators
    bpy = addon.bpy
    path, _ = vfr_clip
    s = bpy.context.scene.prn_face
    s.frame_start, s.frame_end, s.frame_step = 13, 30, 4        # frames 13, 17, 21, 25, 29 (END inclusive)
    s.face = 2
    monkeypatch.setattr(operators, "get_reconstructor", lambda *a, **k: lambda image, **kw: [])
    wm = FakeWM()
    wm.progress_begin = lambda lo, hi: wm.progress.append(("begin", lo, hi))
    ctx = SimpleNamespace(scene=bpy.context.scene, window_manager=wm)
    job = operators.PRN_OT_reconstruct_video.make_job(SimpleNamespace(filepath=str(path), weights=""), ctx)
    assert wm.progress == [("begin", 0, 18), *range(1, 19)] and job.total == 5
    assert (pathlib.Path(job.tmpdir) / "decoded.mkv").is_file()
    job.run_all()
    assert job.indices == [13, 17, 21, 25, 29] and job.fps == 30.0 and job.face == 2
    with pytest.raises(RuntimeError, match=r"no face found in any processed frame \(Face is 2"):
        job.finish(ctx)
    assert not os.path.exists(job.tmpdir) and len(bpy.data.collections) == 0
