"""Operators: reconstruct an image, reconstruct a video (synchronous in background mode, modal with a timer in the
GUI), generate and bake the rig. Every failure reports one line and leaves the scene unchanged."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile

import bpy
import numpy as np
from bpy.props import StringProperty

from ..core.constants import PHOTO_SCALES, PHOTO_TURNS, SURROUND_BLUR, VIDEO_SCALES, VIDEO_TURNS, VIDEO_WIDE_EVERY
from . import scene as sc
from .convert import image_to_blender, metres_per_pixel_for, pose_to_blender
from .preferences import get_preferences

_REC_CACHE: dict = {}
_JOBS: dict = {}


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg and msg[0] else type(e).__name__


# ------------------------------------------------------------------------------------------ core hooks (patchable)
def make_reconstructor(weights=None, device="auto", flip: bool = True, scales: tuple = PHOTO_SCALES,
                       turns: tuple = PHOTO_TURNS, recrop: bool = True, periphery: bool = True,
                       surround_blur: float | None = SURROUND_BLUR, texture_size: int | None = None,
                       refine: bool = False):
    """Cached core.reconstruct.FaceReconstructor for (weights, device, mirror averaging, the views' scales and
    turns, re-crop, wide periphery view, the re-crop's blurred-surround views, texture side or None: auto, the
    refiner)."""
    key = (weights or None, device, flip, tuple(scales), tuple(turns), recrop, periphery, surround_blur, texture_size,
           refine)
    if key not in _REC_CACHE:
        from ..core.reconstruct import FaceReconstructor, InferenceOptions
        _REC_CACHE.clear()
        _REC_CACHE[key] = FaceReconstructor(weights=weights or None, device=device,
                                            options=InferenceOptions(flip=flip, scales=tuple(scales),
                                                                     turns=tuple(turns), recrop=recrop,
                                                                     periphery=periphery,
                                                                     surround_blur=surround_blur,
                                                                     refine=refine, texture_size=texture_size))
    return _REC_CACHE[key]


def get_reconstructor(context, weights_override: str = "", video: bool = False):
    """The reconstructor for the add-on preferences; photos use their views (core.constants.PHOTO_SCALES,
    PHOTO_TURNS) when multi-view averaging is on, the wide periphery view and the re-crop's blurred-surround views
    (SURROUND_BLUR) when that preference is on, video one view (VIDEO_SCALES, VIDEO_TURNS) and no blurred surround
    (its tracked frames have no first pass to blur around); video's wide view runs on key frames only, asked for
    frame by frame (``video_wide_every``), and its texture on the first frame with a face only (open_video, the
    frame the mesh is built from). Textures are as fine as the photo or frame (core.reconstruct.texture_side)
    unless the Texture Size preference fixes their side."""
    pr = get_preferences(context)
    scales, turns = (VIDEO_SCALES, VIDEO_TURNS) if video or not pr.multi_view else (PHOTO_SCALES, PHOTO_TURNS)
    return make_reconstructor(bpy.path.abspath(weights_override) if weights_override else pr.weights, pr.device,
                              pr.mirror_average, scales, turns, pr.recrop, periphery=not video,
                              surround_blur=SURROUND_BLUR if pr.surround_blur and not video else None,
                              texture_size=pr.texture_size, refine=pr.refine)


def video_wide_every(s) -> int:
    """core.video.iter_video's ``wide_every`` for the scene settings ``s``: key frames every
    core.constants.VIDEO_WIDE_EVERY frames with the Wide View setting, else none."""
    return VIDEO_WIDE_EVERY if s.wide_view else 0


def smoothing_settings(s):
    """core.video.OneEuroSettings from the scene settings, or None when smoothing is off."""
    if not s.smoothing:
        return None
    from ..core import video
    cls = getattr(video, "OneEuroSettings")
    return cls(min_cutoff=float(s.min_cutoff), beta=float(s.beta))


#: Blender shows a movie with its rotation metadata applied since 4.5 (tests/test_blender_scene.py checks it on the
#: pinned Blender); before, as stored. The frames tracked must be the ones it shows.
BLENDER_ROTATES_VIDEO = bpy.app.version >= (4, 5, 0)


def blender_timing(path) -> tuple[int, float] | None:
    """(frames, fps) of the movie at ``path`` as Blender plays it (a MovieClip's frame_duration and fps: with a
    variable frame rate, its frame f is the source frame shown at time f / fps), or None when it cannot load it."""
    try:
        clip = bpy.data.movieclips.load(str(path))
    except RuntimeError:
        return None
    try:
        return int(clip.frame_duration), float(clip.fps)
    finally:
        bpy.data.movieclips.remove(clip)


def open_video(path, rec, start=0, end=None, step=1, smoothing=None, wide_every=0, scratch=None, progress=None,
               face_rank=1):
    """(n_frames, fps, (w, h)), iterator of core.video.VideoFrame: the frames Blender shows for the clip, frame i
    behind scene frame i + 1, from ``start`` to ``end`` - 1 (None: to the end) every ``step``. With a folder
    ``scratch`` (the caller removes it), a clip whose frames Blender shows otherwise than OpenCV reads them in order
    (a variable frame rate: Blender repeats frames to play it at a constant rate), or one OpenCV cannot decode but
    Blender can (AV1, for one), is read from a copy of the frame range that Blender re-encodes there (transcode;
    ``progress(done, total)`` after each frame encoded). ``face_rank``: whom to track, 1 = the largest face
    (core.video.iter_video). Only the first frame with a face gets a texture (VideoJob builds the mesh from it).
    core.video.VideoError when neither can read it."""
    from ..core.video import VideoError, iter_video, video_info
    rotated = BLENDER_ROTATES_VIDEO
    timing = blender_timing(path) if scratch is not None else None
    try:
        info = video_info(path, rotated)
        why = None
        if timing is not None and (timing[0] != info.n_frames or not math.isclose(timing[1], info.fps, rel_tol=1e-3)):
            why = (f"{info.n_frames} frames at {info.fps:g} fps on average, Blender plays {timing[0]} at "
                   f"{timing[1]:g} fps")
    except VideoError as e:
        if scratch is None or not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise
        why = e
    if why is None:
        return info, iter_video(path, rec, start=start, end=end, step=step, smoothing=smoothing,
                                wide_every=wide_every, rotated=rotated, face_rank=face_rank, textures="first")
    from .transcode import transcode
    first = max(int(start), 0) if timing is not None else 0      # without Blender's frame count: the whole clip
    try:
        copy = transcode(path, scratch, start=first, end=end if timing is not None else None, progress=progress)
    except RuntimeError as e:
        raise VideoError(f"{why}; {e}") from None
    except ValueError as e:
        raise VideoError(str(e)) from None
    info = video_info(copy, rotated)
    frames = iter_video(copy, rec, start=start - first, end=None if end is None else end - first, step=step,
                        smoothing=smoothing, wide_every=wide_every, rotated=rotated, face_rank=face_rank,
                        textures="first")
    if timing is not None:
        info = dataclasses.replace(info, n_frames=timing[0])
    return info, (dataclasses.replace(fr, index=fr.index + first, time_s=(fr.index + first) / info.fps)
                  for fr in frames)


def face_collection(context, name: str = ""):
    """The face collection called ``name`` when given, else the active object's, else the most recently built one in
    the scene."""
    if name:
        return bpy.data.collections.get(name)
    obj = context.view_layer.objects.active if context.view_layer else None
    if obj is not None:
        for c in obj.users_collection:
            if c.get("prn_source"):
                return c
    colls = [c for c in context.scene.collection.children_recursive if c.get("prn_source")]
    return colls[-1] if colls else None


def _after_rig(context, enabled):
    if not enabled:
        return None

    def after(coll):
        from .rig import generate_rig
        generate_rig(context, coll)
    return after


# ------------------------------------------------------------------------------------------ image
class PRN_OT_reconstruct_image(bpy.types.Operator):
    """Reconstruct the face of a photo as a textured mesh with landmark empties and a matching camera"""
    bl_idname = "prn.reconstruct_image"
    bl_label = "Reconstruct Image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Image", subtype="FILE_PATH", options={"SKIP_SAVE"})
    weights: StringProperty(name="Weights", description="Override the weights of the preferences",
                            options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        if not (self.filepath or context.scene.prn_face.image_path):
            context.window_manager.fileselect_add(self)
            return {"RUNNING_MODAL"}
        return self.execute(context)

    def execute(self, context):
        s = context.scene.prn_face
        path = bpy.path.abspath(self.filepath or s.image_path)
        if not path or not os.path.isfile(path):
            self.report({"ERROR"}, f"image not found: {path or '(no file given)'}")
            return {"CANCELLED"}
        try:
            face, found = get_reconstructor(context, self.weights).pick(path, s.face)
        except Exception as e:  # noqa: BLE001 - every failure becomes one report line
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        try:
            coll = sc.build_face(context, face, path, metres_per_pixel=s.metres_per_pixel or None,
                                 after=_after_rig(context, s.rig), face=s.face)
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, f"building the scene failed: {one_line(e)}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"reconstructed {coll.name}: face {s.face} of the {found} found (largest first)")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------ video
class VideoJob:
    """Per-frame video reconstruction: ``step()`` processes one frame (returns False when the video is exhausted);
    vertices stream to a temporary PC2 file, landmarks and poses stay in memory; ``finish()`` builds the scene."""

    def __init__(self, path, frames, n_total, fps, *, metres_per_pixel=None, mesh_mode="AUTO",
                 shape_key_max_frames=250, rig=False, tmpdir=None, face=1):
        self.path = str(path)
        self.frames = iter(frames)
        self.total = max(int(n_total or 0), 0)
        self.fps = float(fps or 0) or None
        self.k = metres_per_pixel or None
        self.mesh_mode, self.shape_key_max_frames, self.rig = mesh_mode, int(shape_key_max_frames), rig
        self.face = int(face)                    # which face of the clip (1 = the largest): a build of its own
        self.first = None
        self.indices: list[int] = []
        self.lms: list = []
        self.poses: list = []
        self.pending = 0
        self.last_verts = None
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="prn_video_")     # removed by close()
        self.pc2 = None
        self.done = 0
        self.exhausted = False
        self.stop_requested = False

    def step(self) -> bool:
        if self.exhausted:
            return False
        try:
            fr = next(self.frames)
        except StopIteration:
            self.exhausted = True
            return False
        face = fr.face
        self.indices.append(int(fr.index))
        if face is None:
            self.lms.append(None)
            self.poses.append(None)
            if self.pc2 is None:
                self.pending += 1
            else:
                self.pc2.write(self.last_verts)
        else:
            size = tuple(int(v) for v in face.image_size)
            if self.first is None:
                self.first = face
                self.size = size
                self.k = self.k or metres_per_pixel_for(face.pose.scale)
                self.pc2 = sc.PC2Writer(os.path.join(self.tmpdir, "frames.pc2"), len(face.vertices))
            self.last_verts = image_to_blender(face.vertices, self.size, self.k).astype(np.float32)
            for _ in range(self.pending + 1):
                self.pc2.write(self.last_verts)
            self.pending = 0
            self.lms.append(np.asarray(face.landmarks, np.float64))
            self.poses.append(pose_to_blender(face.pose.rotation, face.pose.translation, face.pose.scale,
                                              self.size, self.k))
        self.done += 1
        return True

    def run_all(self) -> None:
        while not self.stop_requested and self.step():
            pass

    @staticmethod
    def _fill(seq):
        first = next(x for x in seq if x is not None)
        out, last = [], first
        for x in seq:
            last = x if x is not None else last
            out.append(last)
        return np.stack(out)

    def finish(self, context):
        """Build and animate the collection from the processed frames. Raises when no face was found."""
        if self.first is None:
            self.close()
            if not self.done:
                raise RuntimeError("no frame processed")
            raise RuntimeError("no face found in any processed frame"
                               + (f" (Face is {self.face}: no frame showed that many faces)" if self.face > 1 else ""))
        self.pc2.close()
        frames = np.asarray(self.indices, np.float64) + 1.0          # video frame i -> scene frame i + 1
        lms, poses = self._fill(self.lms), self._fill(self.poses)
        tmp_pc2 = self.pc2.path
        n = len(frames)
        mode = self.mesh_mode
        if mode == "AUTO":
            mode = "SHAPE_KEYS" if n <= self.shape_key_max_frames else "MESH_CACHE"
        name = sc._name_for(self.path, self.face)
        if bpy.data.filepath:
            final = os.path.join(os.path.dirname(bpy.data.filepath), f"{name}_prn.pc2")
            rel = bpy.path.relpath(final)
        else:
            final = rel = os.path.join(bpy.app.tempdir or tempfile.gettempdir(), f"{name}_prn.pc2")
        self.used_mode, self.cache_file = mode, (final if mode == "MESH_CACHE" else None)

        def after(coll):
            if mode == "MESH_CACHE":
                shutil.copyfile(tmp_pc2, final)
            sc.animate(context, coll, frames, lms, poses, tmp_pc2 if mode == "SHAPE_KEYS" else rel, mode=mode,
                       fps=self.fps)
            if self.rig:
                from .rig import generate_rig
                generate_rig(context, coll)
        try:
            coll = sc.build_face(context, self.first, self.path, metres_per_pixel=self.k, movie_path=self.path,
                                 after=after, face=self.face)
        finally:
            self.close()
        return coll

    def close(self) -> None:
        if self.pc2 is not None:
            self.pc2.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def video_running() -> bool:
    return _JOBS.get("video") is not None


def stop_all() -> None:
    job = _JOBS.pop("video", None)
    if job is not None:
        job.stop_requested = True
        job.close()


def _modal_end(op, context, stopped: bool):
    wm = context.window_manager
    job = op._job
    if getattr(op, "_timer", None) is not None:
        wm.event_timer_remove(op._timer)
        op._timer = None
    wm.progress_end()
    ws = getattr(context, "workspace", None)
    if ws is not None:
        ws.status_text_set(None)
    _JOBS.pop("video", None)
    try:
        coll = job.finish(context)
    except Exception as e:  # noqa: BLE001
        op.report({"ERROR"}, one_line(e))
        return {"CANCELLED"}
    op.report({"INFO"}, f"{'stopped: kept' if stopped else 'reconstructed'} {job.done} frame(s) in {coll.name}")
    return {"FINISHED"}


def video_modal(op, context, event):
    """One modal event: TIMER steps the job one frame, ESC (or a stop request) ends it keeping what was processed."""
    job = op._job
    if event.type == "ESC" or job.stop_requested:
        return _modal_end(op, context, stopped=True)
    if event.type == "TIMER":
        try:
            more = job.step()
        except Exception as e:  # noqa: BLE001
            _JOBS.pop("video", None)
            if getattr(op, "_timer", None) is not None:
                context.window_manager.event_timer_remove(op._timer)
                op._timer = None
            context.window_manager.progress_end()
            job.close()
            op.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        context.window_manager.progress_update(job.done)
        ws = getattr(context, "workspace", None)
        if ws is not None:
            ws.status_text_set(f"Face: frame {job.done}/{job.total or '?'} (Esc to stop)")
        if not more:
            return _modal_end(op, context, stopped=False)
        return {"RUNNING_MODAL"}
    return {"PASS_THROUGH"}


class PRN_OT_reconstruct_video(bpy.types.Operator):
    """Track the face of a video: keyed landmark empties, head pose and animated mesh, the movie as camera
    background. Press again or Esc to stop and keep the processed frames"""
    bl_idname = "prn.reconstruct_video"
    bl_label = "Reconstruct Video"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Video", subtype="FILE_PATH", options={"SKIP_SAVE"})
    weights: StringProperty(name="Weights", options={"HIDDEN", "SKIP_SAVE"})

    def make_job(self, context):
        s = context.scene.prn_face
        path = bpy.path.abspath(self.filepath or s.video_path)
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"video not found: {path or '(no file given)'}")
        rec = get_reconstructor(context, self.weights, video=True)
        end = None if s.frame_end < 0 else s.frame_end + 1      # frame_end is inclusive, core's end exclusive
        tmpdir = tempfile.mkdtemp(prefix="prn_video_")
        wm = context.window_manager
        shown = []

        def progress(done, total):              # a re-encode (operators.open_video) on the cursor's counter
            if not shown:
                wm.progress_begin(0, total)
                shown.append(total)
            wm.progress_update(done)
        try:
            (n, fps, _), frames = open_video(path, rec, start=s.frame_start, end=end, step=s.frame_step,
                                             smoothing=smoothing_settings(s), wide_every=video_wide_every(s),
                                             scratch=tmpdir, progress=progress, face_rank=s.face)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            if shown:
                wm.progress_end()
        last = n if end is None else min(n, end)
        total = max(0, -(-(last - s.frame_start) // s.frame_step)) if n else 0
        return VideoJob(path, frames, total, fps, metres_per_pixel=s.metres_per_pixel or None,
                        mesh_mode=s.mesh_mode, shape_key_max_frames=s.shape_key_max_frames, rig=s.rig,
                        tmpdir=tmpdir, face=s.face)

    def execute(self, context):
        try:
            job = self.make_job(context)
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        try:
            job.run_all()
            coll = job.finish(context)
        except Exception as e:  # noqa: BLE001
            job.close()
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"reconstructed {job.done} frame(s) in {coll.name} ({job.used_mode})")
        return {"FINISHED"}

    def invoke(self, context, event):
        running = _JOBS.get("video")
        if running is not None:                  # pressing the button again stops the running job
            running.stop_requested = True
            self.report({"INFO"}, "stopping the video reconstruction")
            return {"FINISHED"}
        if bpy.app.background:
            return self.execute(context)
        try:
            job = self.make_job(context)
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        self._job = job
        _JOBS["video"] = job
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.001, window=context.window)
        wm.progress_begin(0, max(job.total, 1))
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        return video_modal(self, context, event)

    def cancel(self, context):
        stop_all()


# ------------------------------------------------------------------------------------------ rig
class PRN_OT_generate_rig(bpy.types.Operator):
    """Add a face armature driven by the landmark empties and the head pose"""
    bl_idname = "prn.generate_rig"
    bl_label = "Generate Rig"
    bl_options = {"REGISTER", "UNDO"}

    collection: StringProperty(name="Collection", options={"SKIP_SAVE"})

    def execute(self, context):
        coll = face_collection(context, self.collection)
        if coll is None or not coll.get("prn_source"):
            self.report({"ERROR"}, "no reconstructed face in the scene")
            return {"CANCELLED"}
        try:
            from .rig import generate_rig
            arm = generate_rig(context, coll)
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"rig {arm.name} generated")
        return {"FINISHED"}


class PRN_OT_bake_rig(bpy.types.Operator):
    """Bake the face rig to keyframes over the scene range and remove its constraints"""
    bl_idname = "prn.bake_rig"
    bl_label = "Bake Rig"
    bl_options = {"REGISTER", "UNDO"}

    collection: StringProperty(name="Collection", options={"SKIP_SAVE"})

    def execute(self, context):
        coll = face_collection(context, self.collection)
        rig = sc.objects_by_role(coll).get("rig") if coll is not None else None
        if rig is None:
            self.report({"ERROR"}, "no face rig to bake (generate one first)")
            return {"CANCELLED"}
        try:
            from .rig import bake_rig
            n = bake_rig(context, rig)
        except Exception as e:  # noqa: BLE001
            self.report({"ERROR"}, one_line(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"baked {n} frame(s)")
        return {"FINISHED"}


CLASSES = (PRN_OT_reconstruct_image, PRN_OT_reconstruct_video, PRN_OT_generate_rig, PRN_OT_bake_rig)
