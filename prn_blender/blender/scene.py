"""Building the reconstructed face in Blender: one collection per source (re-running replaces it), mesh with the
layout's fixed topology, UVs, packed texture, pose root, 68 landmark empties, matching camera; linear-time keying
for videos (fcurves via keyframe_points.add + foreach_set, shape keys or a PC2 cache)."""
from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..core.constants import ibug68_part
from .convert import camera_params, image_to_blender, metres_per_pixel_for, pose_to_blender

ID_TYPES = ("objects", "meshes", "materials", "images", "actions", "cameras", "armatures", "movieclips",
            "collections", "shape_keys")
INTERP_LINEAR = 1          # FCurve keyframe interpolation enum value of 'LINEAR'


def landmark_name(i: int) -> str:
    return f"lm_{i:02d}_{ibug68_part(i)}"


def source_key(path) -> str:
    return os.path.normcase(os.path.abspath(bpy.path.abspath(str(path))))


def _name_for(path, face: int = 1) -> str:
    """The name of the build of face number ``face`` (1 = the largest) of the source at ``path``: its file name's
    stem, with ``_face{n}`` from face 2 on."""
    return (Path(str(path)).stem or "face")[:48] + (f"_face{face}" if face > 1 else "")


# --------------------------------------------------------------------------------------------------- bookkeeping
class Build:
    """Tracks the datablocks one build creates: tags them with the source and a build id, removes them all on failure,
    removes the previous build of the same source on success and gives the new datablocks their intended names."""

    def __init__(self, source: str):
        self.source = source
        self.build_id = uuid.uuid4().hex
        self.ids: list[tuple[object, str]] = []

    def add(self, idb, name: str | None = None):
        idb["prn_source"] = self.source
        idb["prn_build"] = self.build_id
        self.ids.append((idb, name or idb.name))
        return idb

    def abort(self, sweep: bool = True) -> None:
        for idb, _ in reversed(self.ids):
            _remove_id(idb)
        self.ids.clear()
        if sweep:
            _sweep(lambda i: i.get("prn_build") == self.build_id)

    def commit(self) -> None:
        remove_source(self.source, keep_build=self.build_id)
        for idb, name in self.ids:
            try:
                if idb.name != name:
                    idb.name = name
            except ReferenceError:
                pass


def _remove_id(idb) -> None:
    try:
        coll = getattr(bpy.data, _collection_of(idb))
        coll.remove(idb)
    except (ReferenceError, RuntimeError, AttributeError, TypeError):
        pass


def _collection_of(idb) -> str:
    return {bpy.types.Object: "objects", bpy.types.Mesh: "meshes", bpy.types.Material: "materials",
            bpy.types.Image: "images", bpy.types.Action: "actions", bpy.types.Camera: "cameras",
            bpy.types.Armature: "armatures", bpy.types.MovieClip: "movieclips",
            bpy.types.Collection: "collections"}.get(type(idb), "")


def remove_source(source: str, keep_build: str | None = None) -> int:
    """Remove every datablock tagged with ``source`` (except those of build ``keep_build``). Returns the count."""
    return _sweep(lambda i: i.get("prn_source") == source and i.get("prn_build") != keep_build)


def _sweep(pred) -> int:
    n = 0
    for attr in ("objects", "collections", "meshes", "materials", "images", "actions", "cameras", "armatures",
                 "movieclips"):
        coll = getattr(bpy.data, attr)
        for idb in [i for i in coll if pred(i)]:
            coll.remove(idb)
            n += 1
    return n


def objects_by_role(collection) -> dict:
    """{'root': obj, 'head': obj, 'mesh': obj, 'camera': obj, 'rig': obj|None, 'landmarks': [68 objs]}"""
    out = {"landmarks": [None] * 68, "rig": None}
    for o in collection.all_objects:
        role = o.get("prn_role")
        if role == "landmark":
            out["landmarks"][int(o["prn_index"])] = o
        elif role:
            out[role] = o
    return out


# --------------------------------------------------------------------------------------------------- datablocks
def new_mesh(name: str, verts, tris, uvs=None):
    """Mesh from (N,3) vertices and (T,3) triangles with vertices/loops/polygons.add + foreach_set (not from_pydata);
    per-vertex UVs (N,2) become the 'UVMap' layer; smooth shaded."""
    verts = np.ascontiguousarray(verts, np.float32)
    tris = np.ascontiguousarray(tris, np.int32)
    n, t = len(verts), len(tris)
    me = bpy.data.meshes.new(name)
    me.vertices.add(n)
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(3 * t)
    me.loops.foreach_set("vertex_index", tris.ravel())
    me.polygons.add(t)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * t, 3, dtype=np.int32))
    me.polygons.foreach_set("use_smooth", np.ones(t, bool))
    if uvs is not None:
        uv = me.uv_layers.new(name="UVMap")
        uv.data.foreach_set("uv", np.ascontiguousarray(np.asarray(uvs, np.float32)[tris.ravel()]).ravel())
    me.update(calc_edges=True)
    return me


def texture_image(name: str, texture, mask) -> "bpy.types.Image":
    """RGBA image datablock from the (T,T,3) UV texture (row 0 = top) and its mask (alpha), packed."""
    tex = np.clip(np.asarray(texture, np.float32), 0.0, 1.0)
    h, w = tex.shape[:2]
    rgba = np.empty((h, w, 4), np.float32)
    rgba[..., :3] = tex
    rgba[..., 3] = np.asarray(mask, np.float32) if mask is not None else 1.0
    img = bpy.data.images.new(name, w, h, alpha=True)
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())   # Blender rows start at the bottom
    img.file_format = "PNG"
    img.pack()
    return img


def face_material(name: str, image) -> "bpy.types.Material":
    mat = bpy.data.materials.new(name)
    try:
        mat.use_nodes = True          # required in 4.x, deprecated (always on) in 5.0
    except (AttributeError, TypeError):
        pass
    nt = mat.node_tree
    bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nt.nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nt.nodes if n.type == "OUTPUT_MATERIAL"), None) or nt.nodes.new(
            "ShaderNodeOutputMaterial")
        nt.links.new(bsdf.outputs[0], out.inputs[0])
    texn = nt.nodes.new("ShaderNodeTexImage")
    texn.image = image
    texn.location = (bsdf.location.x - 350, bsdf.location.y)
    nt.links.new(texn.outputs["Color"], bsdf.inputs["Base Color"])
    nt.links.new(texn.outputs["Alpha"], bsdf.inputs["Alpha"])
    if "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = 0.6
    for attr, val in (("surface_render_method", "DITHERED"), ("blend_method", "HASHED")):
        try:
            setattr(mat, attr, val)
            break
        except (AttributeError, TypeError):
            continue
    return mat


def _empty(b: Build, coll, name, parent=None, display="PLAIN_AXES", size=0.01, role=None):
    o = b.add(bpy.data.objects.new(name, None), name)
    o.empty_display_type = display
    o.empty_display_size = size
    if parent is not None:
        o.parent = parent
    if role:
        o["prn_role"] = role
    coll.objects.link(o)
    return o


def setup_camera(b: Build, coll, name, image_size, k, depth_px, parent=None, image=None, clip=None):
    cp = camera_params(image_size, k, depth_px)
    cam = b.add(bpy.data.cameras.new(name), name)
    cam.type = "ORTHO"
    cam.ortho_scale = cp["ortho_scale"]
    cam.sensor_fit = "AUTO"
    cam.clip_start, cam.clip_end = cp["clip_start"], cp["clip_end"]
    if image is not None or clip is not None:
        cam.show_background_images = True
        bg = cam.background_images.new()
        if clip is not None:
            bg.source = "MOVIE_CLIP"
            bg.clip = clip
            bg.use_camera_clip = False
        else:
            bg.source = "IMAGE"
            bg.image = image
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        bg.frame_method = "FIT"
    obj = b.add(bpy.data.objects.new(name, cam), name)
    obj.location = cp["location"]
    obj.rotation_euler = cp["rotation_euler"]
    obj["prn_role"] = "camera"
    if parent is not None:
        obj.parent = parent
    coll.objects.link(obj)
    return obj, cp


# --------------------------------------------------------------------------------------------------- build
def build_face(context, result, image_path, name: str | None = None, *, metres_per_pixel: float | None = None,
               movie_path=None, set_scene_camera: bool = True, after=None, face: int = 1):
    """Build (or rebuild) the collection of one source from a FaceResult. Replaces the previous build of the same
    source only once this one has fully succeeded; on an exception removes what it created and re-raises.

    ``image_path``: the source (photo; for videos the video path, with ``movie_path`` the same file: the camera
    background is then a movie clip). ``face``: which face of the source this is (1 = the largest); each is a source
    of its own, named with a ``_face{n}`` suffix from 2 on. ``after(collection)`` runs inside the transaction
    (animation, rig): its failure also rolls the build back. Returns the collection."""
    src = source_key(movie_path or image_path) + (f"#face{face}" if face > 1 else "")
    name = name or _name_for(movie_path or image_path, face)
    b = Build(src)
    try:
        coll = _build(context, b, result, image_path, name, metres_per_pixel, movie_path, set_scene_camera)
        if after is not None:
            after(coll)
    except BaseException:
        b.abort()
        raise
    b.commit()
    return coll


def _build(context, b, result, image_path, name, k, movie_path, set_scene_camera):
    scene = context.scene
    w, h = (int(result.image_size[0]), int(result.image_size[1]))
    k = float(k) if k else metres_per_pixel_for(getattr(result.pose, "scale", None))
    coll = b.add(bpy.data.collections.new(name), name)
    coll["prn_k"] = k
    coll["prn_image_size"] = [w, h]
    coll["prn_layout"] = str(result.layout)
    scene.collection.children.link(coll)

    root = _empty(b, coll, f"{name}_root", display="PLAIN_AXES", size=0.05, role="root")
    head = _empty(b, coll, f"{name}_head", parent=root, display="ARROWS", size=10.0, role="head")
    head.matrix_basis = Matrix(pose_to_blender(result.pose.rotation, result.pose.translation, result.pose.scale,
                                               (w, h), k).tolist())

    verts = image_to_blender(result.vertices, (w, h), k)
    me = b.add(new_mesh(f"{name}_face", verts, result.triangles, result.uvs), f"{name}_face")
    img = b.add(texture_image(f"{name}_texture", result.texture, result.texture_mask), f"{name}_texture")
    mat = b.add(face_material(f"{name}_face", img), f"{name}_face")
    me.materials.append(mat)
    mesh_obj = b.add(bpy.data.objects.new(f"{name}_face", me), f"{name}_face")
    mesh_obj.parent = root
    mesh_obj["prn_role"] = "mesh"
    coll.objects.link(mesh_obj)

    size = float(np.ptp(verts[:, 0])) if len(verts) else 0.1
    lms = image_to_blender(result.landmarks, (w, h), k)
    for i in range(68):
        o = _empty(b, coll, landmark_name(i), parent=root, display="SPHERE", size=max(size * 0.006, 1e-4),
                   role="landmark")
        o["prn_index"] = i
        o.location = lms[i]

    photo = clip = None
    if movie_path:
        mp = str(bpy.path.abspath(str(movie_path)))
        clip = b.add(bpy.data.movieclips.load(mp), os.path.basename(mp))   # base name once the old one is gone
        clip.frame_start = 1
    elif image_path is not None and os.path.isfile(bpy.path.abspath(str(image_path))):
        ip = str(bpy.path.abspath(str(image_path)))
        photo = b.add(bpy.data.images.load(ip, check_existing=False), os.path.basename(ip))
    depth = float(np.nanmax(result.vertices[:, 2])) if len(result.vertices) else 0.0
    cam, _ = setup_camera(b, coll, f"{name}_camera", (w, h), k, depth, parent=root, image=photo, clip=clip)
    if set_scene_camera:
        scene.camera = cam
        scene.render.resolution_x, scene.render.resolution_y = w, h
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    return coll


# --------------------------------------------------------------------------------------------------- keying
def _action_for(idb, name: str | None = None):
    ad = idb.animation_data or idb.animation_data_create()
    if ad.action is None:
        act = bpy.data.actions.new(name or f"{idb.name}Action")
        for k in ("prn_source", "prn_build"):
            if k in idb:
                act[k] = idb[k]
        ad.action = act
    return ad.action


def fcurve(idb, data_path: str, index: int = 0, group: str = ""):
    """The F-Curve of ``idb`` for (data_path, index), created if needed (Blender 4.2-5.0: slotted actions use
    ``fcurve_ensure_for_datablock``; older ones ``action.fcurves``)."""
    act = _action_for(idb)
    if hasattr(act, "fcurve_ensure_for_datablock"):
        try:                                         # group_name: 5.0+
            return act.fcurve_ensure_for_datablock(idb, data_path, index=index, group_name=group)
        except TypeError:
            return act.fcurve_ensure_for_datablock(idb, data_path, index=index)
    fc = act.fcurves.find(data_path, index=index)
    return fc if fc is not None else act.fcurves.new(data_path, index=index, action_group=group)


def set_keys(fc, frames, values) -> None:
    """Replace the keys of ``fc`` with (frames, values) in linear time, LINEAR interpolation."""
    frames = np.asarray(frames, np.float32).ravel()
    values = np.asarray(values, np.float32).ravel()
    kp = fc.keyframe_points
    if len(kp):
        for i in range(len(kp) - 1, -1, -1):
            kp.remove(kp[i], fast=True)
    n = len(frames)
    kp.add(n)
    co = np.empty(2 * n, np.float32)
    co[0::2], co[1::2] = frames, values
    kp.foreach_set("co", co)
    kp.foreach_set("interpolation", np.full(n, INTERP_LINEAR, np.int32))
    fc.update()


def key_landmarks(objs, frames, landmarks) -> None:
    """Key the location of 68 empties: ``frames`` (F,) scene frames, ``landmarks`` (F,68,3) Blender coordinates
    (local = world under the static root)."""
    lm = np.asarray(landmarks, np.float64)
    for i, o in enumerate(objs):
        for ax in range(3):
            set_keys(fcurve(o, "location", ax, "Object Transforms"), frames, lm[:, i, ax])


def key_matrices(obj, frames, matrices) -> None:
    """Key location / rotation_euler (continuous) / scale of ``obj`` from (F,4,4) basis matrices."""
    locs, rots, scls = [], [], []
    prev = None
    for m in np.asarray(matrices, np.float64):
        loc, q, s = Matrix(m.tolist()).decompose()
        e = q.to_euler(obj.rotation_mode if obj.rotation_mode in ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")
                       else "XYZ", prev) if prev is not None else q.to_euler("XYZ")
        prev = e
        locs.append(tuple(loc))
        rots.append(tuple(e))
        scls.append(tuple(s))
    obj.rotation_mode = "XYZ"
    for path, arr in (("location", locs), ("rotation_euler", rots), ("scale", scls)):
        a = np.asarray(arr)
        for ax in range(3):
            set_keys(fcurve(obj, path, ax, "Object Transforms"), frames, a[:, ax])


def key_shape_keys(mesh_obj, frames, vertex_frames) -> None:
    """One shape key per frame (Basis = first frame), values keyed 0 -> 1 -> 0 so that in-between scene frames
    interpolate linearly between neighbouring video frames."""
    vf = np.asarray(vertex_frames)
    frames = np.asarray(frames, np.float64)
    if mesh_obj.data.shape_keys is None:
        mesh_obj.shape_key_add(name="Basis", from_mix=False)
    mesh_obj.data.shape_keys.key_blocks[0].data.foreach_set("co", np.ascontiguousarray(vf[0], np.float32).ravel())
    key = mesh_obj.data.shape_keys
    key.use_relative = True
    n = len(frames)
    for j in range(n):
        kb = mesh_obj.shape_key_add(name=f"frame_{int(frames[j]):05d}", from_mix=False)
        kb.data.foreach_set("co", np.ascontiguousarray(vf[j], np.float32).ravel())
        kb.slider_min, kb.slider_max = 0.0, 1.0
        fr, va = [frames[j]], [1.0]
        if j > 0:
            fr.insert(0, frames[j - 1])
            va.insert(0, 0.0)
        if j < n - 1:
            fr.append(frames[j + 1])
            va.append(0.0)
        set_keys(fcurve(key, f'key_blocks["{kb.name}"].value', 0, "Shape Keys"), fr, va)


PC2_HEADER = struct.Struct("<12siiffi")


class PC2Writer:
    """Streams (N,3) float32 vertex frames to a PC2 point cache; the sample count is patched on close."""

    def __init__(self, path, n_points: int, start_frame: float = 0.0, sample_rate: float = 1.0):
        self.path = str(path)
        self.n_points = int(n_points)
        self.start, self.rate = float(start_frame), float(sample_rate)
        self.count = 0
        self.f = open(self.path, "wb")
        self.f.write(PC2_HEADER.pack(b"POINTCACHE2\0", 1, self.n_points, self.start, self.rate, 0))

    def write(self, verts) -> None:
        v = np.ascontiguousarray(verts, np.float32)
        if v.shape != (self.n_points, 3):
            raise ValueError(f"PC2 frame must be ({self.n_points}, 3), got {v.shape}")
        self.f.write(v.tobytes())
        self.count += 1

    def close(self) -> None:
        if self.f is None:
            return
        self.f.seek(0)
        self.f.write(PC2_HEADER.pack(b"POINTCACHE2\0", 1, self.n_points, self.start, self.rate, self.count))
        self.f.close()
        self.f = None


def read_pc2(path) -> np.ndarray:
    """(S,N,3) float32 memory map of a PC2 file."""
    with open(path, "rb") as f:
        sig, _, n, _, _, s = PC2_HEADER.unpack(f.read(PC2_HEADER.size))
    if sig[:11] != b"POINTCACHE2":
        raise ValueError(f"{path}: not a PC2 file")
    return np.memmap(path, np.float32, "r", offset=PC2_HEADER.size, shape=(s, n, 3))


def attach_mesh_cache(mesh_obj, pc2_path, first_frame: float, step: float):
    """MESH_CACHE modifier playing the PC2 file: sample j at scene frame first_frame + j * step."""
    mod = mesh_obj.modifiers.get("PRN cache") or mesh_obj.modifiers.new("PRN cache", "MESH_CACHE")
    mod.cache_format = "PC2"
    mod.filepath = str(pc2_path)
    mod.play_mode = "SCENE"
    mod.time_mode = "FRAME"
    mod.frame_scale = 1.0 / float(step)
    mod.frame_start = float(first_frame) / float(step)
    mod.interpolation = "LINEAR"
    return mod


def animate(context, collection, frames, landmarks_img, pose_matrices, vertex_frames, *, mode: str = "AUTO",
            shape_key_max_frames: int = 250, pc2_path=None, fps: float | None = None) -> str:
    """Animate a built collection: ``frames`` (F,) scene frames (uniform step), ``landmarks_img`` (F,68,3) image
    frame, ``pose_matrices`` (F,4,4) Blender head matrices, ``vertex_frames`` (F,N,3) Blender vertices (array or
    memmap) or the path of a PC2 file holding them. Returns the mesh animation mode used."""
    scene = context.scene
    objs = objects_by_role(collection)
    w, h = collection["prn_image_size"]
    k = float(collection["prn_k"])
    frames = np.asarray(frames, np.float64)
    n = len(frames)
    key_landmarks(objs["landmarks"], frames, image_to_blender(landmarks_img, (w, h), k))
    key_matrices(objs["head"], frames, pose_matrices)
    step = float(frames[1] - frames[0]) if n > 1 else 1.0
    if mode == "AUTO":
        mode = "SHAPE_KEYS" if n <= shape_key_max_frames else "MESH_CACHE"
    mesh_obj = objs["mesh"]
    if mode == "SHAPE_KEYS":
        vf = read_pc2(vertex_frames) if isinstance(vertex_frames, (str, os.PathLike)) else vertex_frames
        key_shape_keys(mesh_obj, frames, vf)
    else:
        if not isinstance(vertex_frames, (str, os.PathLike)):
            if pc2_path is None:
                raise ValueError("MESH_CACHE needs pc2_path when vertex frames are given as an array")
            wr = PC2Writer(pc2_path, np.shape(vertex_frames)[1], frames[0], step)
            for v in vertex_frames:
                wr.write(v)
            wr.close()
            vertex_frames = pc2_path
        attach_mesh_cache(mesh_obj, vertex_frames, frames[0], step)
    scene.frame_start, scene.frame_end = int(frames[0]), int(frames[-1])
    if fps:
        scene.render.fps = max(1, int(round(fps)))
        scene.render.fps_base = scene.render.fps / float(fps)
    collection["prn_frames"] = [int(frames[0]), int(frames[-1]), int(step)]
    return mode
