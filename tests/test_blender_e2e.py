"""End to end through bpy.ops with the REAL FaceReconstructor (shipped weights, CPU): image, synthetic and real video,
rig, headless pipeline. The shipped model may be a weak placeholder: these tests check structure and exact
consistency between the add-on and prn_blender.core, never accuracy."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from prn_blender.blender.convert import image_to_blender, metres_per_pixel_for

pytestmark = pytest.mark.bpy
ID_KINDS = ("objects", "meshes", "materials", "images", "collections", "actions", "cameras", "armatures",
            "movieclips")


# ------------------------------------------------------------------------------------------------ helpers / fixtures
@pytest.fixture(scope="module")
def core_rec():
    """An independent core reconstructor (same defaults as the add-on's photo operator: shipped weights, device
    auto -> CPU here, mirror and multi-view averaging)."""
    from prn_blender.core.reconstruct import FaceReconstructor
    return FaceReconstructor()


@pytest.fixture(scope="module")
def core_video_rec():
    """The same for the video operator, which runs one view, no blurred-surround views, and the periphery view on
    key frames only (asked for by core_video's iter_video)."""
    from prn_blender.core.constants import VIDEO_SCALES, VIDEO_TURNS
    from prn_blender.core.reconstruct import FaceReconstructor, InferenceOptions
    return FaceReconstructor(options=InferenceOptions(scales=VIDEO_SCALES, turns=VIDEO_TURNS, periphery=False,
                                                      surround_blur=None))


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> str:
    import cv2
    from skimage import data
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(p), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return str(p)


@pytest.fixture
def addon(bpy_empty):
    from prn_blender.blender import register
    register()
    return bpy_empty


def names(bpy) -> dict:
    return {k: sorted(x.name for x in getattr(bpy.data, k)) for k in ID_KINDS}


def face_coll(bpy):
    colls = [c for c in bpy.data.collections if c.get("prn_source")]
    assert len(colls) == 1, [c.name for c in colls]
    return colls[0]


def fcurves(idb):
    ad = idb.animation_data
    if ad is None or ad.action is None:
        return []
    act = ad.action
    try:
        return list(act.fcurves)
    except AttributeError:   # Blender 5.0: channelbags
        return [fc for layer in act.layers for strip in layer.strips for cb in strip.channelbags
                for fc in cb.fcurves]


def keys(fc) -> np.ndarray:
    co = np.zeros(2 * len(fc.keyframe_points), np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co.reshape(-1, 2)


def evaluated_vertices(bpy, obj) -> np.ndarray:
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    try:
        got = np.zeros(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", got)
    finally:
        ev.to_mesh_clear()
    return got.reshape(-1, 3)


def core_video(path, rec, start=0, end_inclusive=-1, step=1, smoothing=None):
    """What the video operator should have computed (its default Wide View: key frames every VIDEO_WIDE_EVERY): the
    core's frames (None faces hold the previous one), the scene frames, and the operator's metres per pixel (from
    the first face's head-pose scale)."""
    from prn_blender.core.constants import VIDEO_WIDE_EVERY
    from prn_blender.core.video import iter_video
    end = None if end_inclusive < 0 else end_inclusive + 1
    frs = list(iter_video(str(path), rec, start=start, end=end, step=step, smoothing=smoothing,
                          wide_every=VIDEO_WIDE_EVERY))
    assert frs and any(f.face is not None for f in frs)
    first = next(f.face for f in frs if f.face is not None)
    faces, last = [], first
    for f in frs:
        last = f.face if f.face is not None else last
        faces.append(last)
    return (np.array([f.index for f in frs], np.float64) + 1.0, faces, metres_per_pixel_for(first.pose.scale),
            tuple(int(v) for v in first.image_size))


def check_landmark_keys(objs, frames, faces, size, k):
    lm = image_to_blender(np.stack([f.landmarks for f in faces]), size, k)
    assert len(objs["landmarks"]) == 68 and all(o is not None for o in objs["landmarks"])
    for i, o in enumerate(objs["landmarks"]):
        fcs = {(fc.data_path, fc.array_index): fc for fc in fcurves(o)}
        for ax in range(3):
            co = keys(fcs[("location", ax)])
            assert len(co) == len(frames), (o.name, ax, len(co))
            assert np.array_equal(co[:, 0], frames.astype(np.float32))
            assert np.allclose(co[:, 1], lm[:, i, ax], atol=1e-6), (o.name, ax)


# ------------------------------------------------------------------------------------------------ image
def test_image_end_to_end(addon, core_rec, astronaut_png, tmp_path):
    bpy = addon
    from prn_blender.blender import scene as sc
    from prn_blender.core.layout import load_layout
    assert bpy.ops.prn.reconstruct_image(filepath=astronaut_png) == {"FINISHED"}
    coll = face_coll(bpy)
    objs = sc.objects_by_role(coll)
    lay = load_layout(coll["prn_layout"])
    me = objs["mesh"].data
    assert len(me.vertices) == lay.n_vertices and len(me.polygons) == len(lay.triangles)
    assert all(p.loop_total == 3 for p in me.polygons[:100])
    assert "UVMap" in me.uv_layers
    mat = me.materials[0]
    tex = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert tex and tex[0].image is not None and tuple(tex[0].image.size) == (256, 256)   # auto: 0.55 px a texel
    lm_objs = objs["landmarks"]
    assert [o.name for o in lm_objs] == [sc.landmark_name(i) for i in range(68)]
    assert lm_objs[0].name == "lm_00_jaw" and lm_objs[36].name == "lm_36_eye_r"
    cam = objs["camera"]
    assert cam.type == "CAMERA" and bpy.context.scene.camera == cam
    bg = cam.data.background_images
    assert len(bg) == 1 and bg[0].source == "IMAGE" and bg[0].image is not None
    assert os.path.samefile(bpy.path.abspath(bg[0].image.filepath), astronaut_png)
    assert tuple(bg[0].image.size) == (512, 512)
    r = bpy.context.scene.render
    assert (r.resolution_x, r.resolution_y) == (512, 512)

    # exact consistency with the core (deterministic on CPU)
    face = core_rec(astronaut_png)[0]
    k = float(coll["prn_k"])
    assert np.isclose(k, metres_per_pixel_for(face.pose.scale), rtol=1e-9)
    assert list(coll["prn_image_size"]) == list(face.image_size)
    want = image_to_blender(face.landmarks, face.image_size, k)
    bpy.context.view_layer.update()
    got = np.array([list(o.matrix_world.translation) for o in lm_objs])
    assert np.abs(got - want).max() < 1e-4
    co = np.zeros(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    assert np.abs(co.reshape(-1, 3) - image_to_blender(face.vertices, face.image_size, k)).max() < 1e-4

    # a second run replaces the first (no duplicates)
    before = names(bpy)
    assert bpy.ops.prn.reconstruct_image(filepath=astronaut_png) == {"FINISHED"}
    assert names(bpy) == before
    assert len([o for o in bpy.data.objects if o.name.startswith("lm_")]) == 68
    assert len(bpy.data.meshes) == 1 and len(bpy.data.collections) == 1

    # Preferences -> Texture Size fixes the texture's side; the geometry stays the same
    addon_entry = bpy.context.preferences.addons.new()
    try:
        addon_entry.module = "prn_blender"
        assert addon_entry.preferences.texture_size == "AUTO"
        addon_entry.preferences.texture_size = "512"
        assert bpy.ops.prn.reconstruct_image(filepath=astronaut_png) == {"FINISHED"}
    finally:
        bpy.context.preferences.addons.remove(addon_entry)
    assert names(bpy) == before
    me = sc.objects_by_role(face_coll(bpy))["mesh"].data
    img, = [n.image for n in me.materials[0].node_tree.nodes if n.type == "TEX_IMAGE"]
    assert tuple(img.size) == (512, 512)
    co2 = np.zeros(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co2)
    assert np.array_equal(co2, co)

    # failures raise (operator ERROR report) and leave the scene as it was
    data = Path(astronaut_png).read_bytes()
    import cv2
    ok, jpg = cv2.imencode(".jpg", cv2.imread(astronaut_png))
    assert ok
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(jpg.tobytes()[:100])
    assert data
    for bad in (str(trunc), str(tmp_path / "missing.png")):
        with pytest.raises(RuntimeError):
            bpy.ops.prn.reconstruct_image(filepath=bad)
        assert names(bpy) == before, bad


# ------------------------------------------------------------------------------------------------ synthetic video
@pytest.mark.shared
@pytest.mark.slow
def test_synthetic_video_end_to_end(addon, core_video_rec, shared, tmp_path):
    bpy = addon
    from prn_blender.blender import scene as sc
    from prn_blender.synth.clip import make_synthetic_clip
    clip, _gt = make_synthetic_clip(tmp_path / "clip.avi", n_frames=6, seed=3)
    s = bpy.context.scene.prn_face
    s.frame_start, s.frame_end, s.frame_step = 0, -1, 1
    s.smoothing = False
    s.mesh_mode = "SHAPE_KEYS"
    assert bpy.ops.prn.reconstruct_video(filepath=str(clip)) == {"FINISHED"}
    frames, faces, k, size = core_video(clip, core_video_rec)
    assert len(frames) == 6
    coll = face_coll(bpy)
    assert np.isclose(float(coll["prn_k"]), k, rtol=1e-9)
    assert list(coll["prn_image_size"]) == list(size)
    objs = sc.objects_by_role(coll)
    check_landmark_keys(objs, frames, faces, size, k)
    head_paths = {fc.data_path for fc in fcurves(objs["head"]) if len(fc.keyframe_points) == len(frames)}
    assert {"location", "rotation_euler", "scale"} <= head_paths
    assert objs["camera"].data.background_images[0].source == "MOVIE_CLIP"
    # the mesh wears the first frame's texture (only that frame's is made: open_video's textures="first")
    tex, = [im for im in bpy.data.images if im.name.endswith("_texture")]
    alpha = np.array(tex.pixels[:]).reshape(-1, 4)[:, 3]
    assert tex.size[0] == tex.size[1] >= 256 and alpha.mean() > 0.3

    j = 3                                               # video frame 3 -> scene frame 4
    want = image_to_blender(faces[j].vertices, size, k)
    scene = bpy.context.scene
    scene.frame_set(int(frames[j]))
    assert objs["mesh"].data.shape_keys is not None
    assert len(objs["mesh"].data.shape_keys.key_blocks) == len(frames) + 1
    assert np.abs(evaluated_vertices(bpy, objs["mesh"]) - want).max() < 1e-5

    # the mesh cache (PC2) path gives the same evaluated mesh
    s.mesh_mode = "MESH_CACHE"
    assert bpy.ops.prn.reconstruct_video(filepath=str(clip)) == {"FINISHED"}
    coll = face_coll(bpy)
    assert [c.name for c in bpy.data.movieclips] == ["clip.avi"]          # replaced, not "clip.avi.001"
    assert len(bpy.data.meshes) == 1 and len(bpy.data.collections) == 1
    objs = sc.objects_by_role(coll)
    mod = objs["mesh"].modifiers
    assert len(mod) == 1 and mod[0].type == "MESH_CACHE" and mod[0].cache_format == "PC2"
    assert objs["mesh"].data.shape_keys is None
    assert os.path.isfile(bpy.path.abspath(mod[0].filepath))
    check_landmark_keys(objs, frames, faces, size, k)
    scene.frame_set(int(frames[j]))
    assert np.abs(evaluated_vertices(bpy, objs["mesh"]) - want).max() < 1e-5


# ------------------------------------------------------------------------------------------------ real video + rig
@pytest.mark.shared
@pytest.mark.slow
def test_real_clip_rig_end_to_end(addon, shared):
    bpy = addon
    from prn_blender.blender import scene as sc
    clip = shared / "videos" / "talking_face_160x120.avi"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    s = bpy.context.scene.prn_face
    s.frame_start, s.frame_end, s.frame_step = 0, 16, 4     # frames 0, 4, 8, 12, 16 (END inclusive)
    s.smoothing = False
    assert bpy.ops.prn.reconstruct_video(filepath=str(clip)) == {"FINISHED"}
    coll = face_coll(bpy)
    objs = sc.objects_by_role(coll)
    frames = np.array([1.0, 5.0, 9.0, 13.0, 17.0])
    for o in objs["landmarks"]:
        fcs = [fc for fc in fcurves(o) if fc.data_path == "location"]
        assert len(fcs) == 3 and all(len(fc.keyframe_points) == 5 for fc in fcs), o.name
        assert np.array_equal(keys(fcs[0])[:, 0], frames)
    head = {fc.data_path: len(fc.keyframe_points) for fc in fcurves(objs["head"])}
    assert head.get("location") == 5 and head.get("rotation_euler") == 5
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, 17)

    assert bpy.ops.prn.generate_rig(collection=coll.name) == {"FINISHED"}
    arm = sc.objects_by_role(coll)["rig"]
    assert arm is not None and arm.type == "ARMATURE"
    assert any(len(pb.constraints) for pb in arm.pose.bones)

    def pose(f):
        scene.frame_set(f)
        return np.stack([np.array(arm.matrix_world @ pb.matrix) for pb in arm.pose.bones])

    a, b = pose(1), pose(17)
    assert np.abs(a - b).max() > 1e-6                     # the rig animates
    assert bpy.ops.prn.bake_rig(collection=coll.name) == {"FINISHED"}
    assert all(len(pb.constraints) == 0 for pb in arm.pose.bones)
    fcs = fcurves(arm)
    assert fcs and all(len(fc.keyframe_points) == 17 for fc in fcs)
    assert np.allclose(pose(17), b, atol=1e-4)            # baked pose == constrained pose


# ------------------------------------------------------------------------------------------------ pipeline
def test_pipeline_run_blend(addon, astronaut_png, tmp_path):
    bpy = addon
    from prn_blender.blender.pipeline import run_blend
    out = tmp_path / "a.blend"
    assert run_blend(astronaut_png, out) == 0
    assert out.is_file()
    assert not list(tmp_path.glob(".prn_tmp_*"))
    bpy.ops.wm.open_mainfile(filepath=str(out))
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    assert len(meshes) == 1 and "UVMap" in meshes[0].data.uv_layers
    assert len([o for o in bpy.data.objects if o.type == "EMPTY" and o.name.startswith("lm_")]) == 68

    # failures return non-zero and never touch an existing OUT
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    ref = out.read_bytes()
    assert run_blend(tmp_path / "missing.png", out) != 0
    assert out.read_bytes() == ref
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(Path(astronaut_png).read_bytes()[:100])
    assert run_blend(bad, out) != 0
    assert out.read_bytes() == ref
    assert not list(tmp_path.glob(".prn_tmp_*"))
