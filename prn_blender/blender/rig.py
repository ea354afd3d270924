"""Face rig: an armature whose head bone follows the head-pose empty and whose face bones (jaw, lips, eyelids,
brows, nose, cheeks) follow the landmark empties through constraints; baking turns it into plain keyframes."""
from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .scene import Build, objects_by_role, set_keys, fcurve

#: bone -> (landmark index whose empty the bone follows, constraint kind)
FACE_BONES = {
    "jaw": (8, "DAMPED_TRACK"),
    "lip_upper": (51, "COPY_LOCATION"), "lip_lower": (57, "COPY_LOCATION"),
    "lip_corner_r": (48, "COPY_LOCATION"), "lip_corner_l": (54, "COPY_LOCATION"),
    "lip_inner_upper": (62, "COPY_LOCATION"), "lip_inner_lower": (66, "COPY_LOCATION"),
    "lid_upper_r": (37, "COPY_LOCATION"), "lid_lower_r": (41, "COPY_LOCATION"),
    "lid_upper_l": (44, "COPY_LOCATION"), "lid_lower_l": (46, "COPY_LOCATION"),
    "brow_in_r": (21, "COPY_LOCATION"), "brow_mid_r": (19, "COPY_LOCATION"), "brow_out_r": (17, "COPY_LOCATION"),
    "brow_in_l": (22, "COPY_LOCATION"), "brow_mid_l": (24, "COPY_LOCATION"), "brow_out_l": (26, "COPY_LOCATION"),
    "nose_tip": (30, "COPY_LOCATION"), "nostril_r": (31, "COPY_LOCATION"), "nostril_l": (35, "COPY_LOCATION"),
    "cheek_r": (3, "COPY_LOCATION"), "cheek_l": (13, "COPY_LOCATION"),
}


def _world(o) -> Vector:
    return o.matrix_world.translation.copy()


def generate_rig(context, collection):
    """Add (or replace) the armature of a built face collection. Returns the armature object."""
    objs = objects_by_role(collection)
    head, lms = objs.get("head"), objs["landmarks"]
    if head is None or any(o is None for o in lms):
        raise ValueError(f"collection {collection.name!r} is not a reconstructed face")
    old = objs.get("rig")
    context.view_layer.update()
    b = Build(collection.get("prn_source", ""))
    b.build_id = collection.get("prn_build", b.build_id)     # part of the face's build (replaced with it)
    try:
        arm_obj = _generate(context, b, collection, objs, head, lms)
    except BaseException:
        b.abort(sweep=False)
        raise
    if old is not None:
        data = old.data
        bpy.data.objects.remove(old)
        if data.users == 0:
            bpy.data.armatures.remove(data)
    for idb, name in b.ids:
        if idb.name != name:
            idb.name = name
    return arm_obj


def _generate(context, b, collection, objs, head, lms):
    name = f"{collection.name}_rig"
    arm = b.add(bpy.data.armatures.new(name), name)
    arm_obj = b.add(bpy.data.objects.new(name, arm), name)
    arm_obj["prn_role"] = "rig"
    arm_obj.parent = objs["root"]
    collection.objects.link(arm_obj)
    arm_obj.show_in_front = True
    pts = np.array([list(_world(o)) for o in lms])
    size = float(np.ptp(pts[:, 0])) or 0.1
    hm = head.matrix_world.copy()
    hloc, hrot, _ = hm.decompose()
    up = hrot @ Vector((0, 1, 0))
    fwd = hrot @ Vector((0, 0, 1))          # out of the face (toward the camera when frontal)

    view_layer = context.view_layer
    prev_active = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        eb = arm.edit_bones.new("head")
        eb.head = hloc
        eb.tail = hloc + up * size
        eb.align_roll(fwd)
        for bname, (li, kind) in FACE_BONES.items():
            e = arm.edit_bones.new(bname)
            e.parent = arm.edit_bones["head"]
            if kind == "DAMPED_TRACK":           # jaw: pivot between the ears' jaw points, tail on the chin
                e.head = Vector(((pts[0] + pts[16]) / 2).tolist()) - fwd * size * 0.1
                e.tail = Vector(pts[li].tolist())
            else:
                e.head = Vector(pts[li].tolist())
                e.tail = e.head + fwd * size * 0.08
            e.use_deform = True
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = prev_active
    pb = arm_obj.pose.bones
    c = pb["head"].constraints.new("COPY_LOCATION")
    c.target = head
    c = pb["head"].constraints.new("COPY_ROTATION")
    c.target = head
    for bname, (li, kind) in FACE_BONES.items():
        c = pb[bname].constraints.new(kind)
        c.target = lms[li]
    return arm_obj


def bake_rig(context, arm_obj, frame_start: int | None = None, frame_end: int | None = None):
    """Bake the constrained pose of every bone to keyframes (one per frame, written with foreach_set) and remove the
    constraints. Returns the number of frames baked."""
    scene = context.scene
    fs = scene.frame_start if frame_start is None else int(frame_start)
    fe = scene.frame_end if frame_end is None else int(frame_end)
    frames = np.arange(fs, fe + 1)
    bones = list(arm_obj.pose.bones)
    cur = scene.frame_current
    data = {pb.name: np.zeros((len(frames), 10)) for pb in bones}
    for j, f in enumerate(frames):
        scene.frame_set(int(f))
        for pb in bones:      # parents come before children in pose.bones: convert with the evaluated parents
            m = arm_obj.convert_space(pose_bone=pb, matrix=pb.matrix, from_space="POSE", to_space="LOCAL")
            loc, q, s = m.decompose()
            data[pb.name][j] = [*loc, *q, *s]
    for pb in bones:
        for c in list(pb.constraints):
            pb.constraints.remove(c)
        pb.rotation_mode = "QUATERNION"
        d = data[pb.name]
        q = d[:, 3:7]
        for j in range(1, len(q)):           # keep quaternions continuous
            if np.dot(q[j], q[j - 1]) < 0:
                q[j] = -q[j]
        base = f'pose.bones["{pb.name}"]'
        for path, cols in (("location", range(0, 3)), ("rotation_quaternion", range(3, 7)), ("scale", range(7, 10))):
            for ax, col in enumerate(cols):
                set_keys(fcurve(arm_obj, f"{base}.{path}", ax, pb.name), frames, d[:, col])
    scene.frame_set(cur)
    return len(frames)
