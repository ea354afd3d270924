"""Image -> list of FaceResult: the one callable API of the core (like 3DDFA_V2's ``TDDFA``).

    rec = FaceReconstructor()                     # shipped weights, auto device, default detector
    faces = rec("photo.jpg")                      # or an (H,W,3) array; box=... / landmarks=... to skip detection

Stages (timed in ``FaceResult.timings``, milliseconds): detect, crop, net, uncrop, refine (core.refine), texture.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .constants import (
    FIRST_PASS_VIEWS,
    IBUG68_MIRROR,
    JAW_SHARP,
    PERIPHERY_FADE,
    PHOTO_SCALES,
    PHOTO_TURNS,
    POS_SCALE,
    REGION_NECK,
    RESOLUTION,
    ROLL_FREE,
    SURROUND_BLUR,
    TEXTURE_MAX,
)
from .context import blur_surround
from .crop import crop_from_box, crop_from_landmarks, turn_crop, uncrop_position_map, warp
from .detect import Detector, make_detector
from .image_io import load_image, upright_turns
from .layout import UVLayout
from .network import cpu_bf16
from .pose import estimate_pose, umeyama
from .refine import DEFAULT_REFINER, Refiner
from .result import CropTransform, FaceResult, largest_first
from .weights import WeightsError, inference_zoom, landmark_layout, load_model


class ReconstructionError(RuntimeError):
    """No face could be reconstructed from the input (one-line reason)."""


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when the installed torch has it, else CPU; 'cuda' without CUDA raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ReconstructionError("CUDA requested but this torch build has no CUDA device")
    return torch.device(device)


#: fit residual (relative to face size) at which the confidence drops to 1/e. Measured: ground-truth synthetic
#: faces 0.04-0.08 against the canonical mean face; the shipped model on AFLW2000-3D photos about 0.13-0.16.
CONFIDENCE_RESIDUAL = 0.25


@dataclass
class InferenceOptions:
    amp: bool = True              # autocast: fp16 on CUDA, bf16 on CPUs that run it natively (cpu_bf16), else off
    channels_last: bool = True
    batch_size: int = 8
    flip: bool = True             # test-time mirror averaging: 2x network cost; what it does to the shipped
                                  # model's error: the model card's ours_single_pass vs ours_one_scale rows
    zoom: float | None = None     # the side of a crop made from a detector box or landmarks is divided by this (a
                                  # given roi box is used as it is); None: the weights' own (weights.inference_zoom:
                                  # their metadata, else constants.INFERENCE_ZOOM)
    scales: tuple[float, ...] = PHOTO_SCALES  # each crop runs at these multiples of its side, each view turned by
    turns: tuple[float, ...] = PHOTO_TURNS    # these angles (degrees, about the crop centre), and the views'
                                              # un-cropped position maps are averaged (constants.PHOTO_SCALES,
                                              # PHOTO_TURNS); one view: constants.VIDEO_SCALES, VIDEO_TURNS
    periphery: bool = True        # one more view, each crop's side x the zoom (the un-zoomed crop), gives the
                                  # surface outside the landmarks' hull (forehead, ears, neck); +1 network pass per
                                  # crop (x2 with flip); the landmarks do not change. None at zoom 1 (nothing wider to
                                  # see). Video runs it on key frames only (core.video, constants.VIDEO_WIDE_EVERY)
    roll_free: float | None = ROLL_FREE   # crops made from the project's own landmarks (the re-crop, video tracking)
                                          # are turned with the head's roll beyond +-this many degrees, so the face
                                          # in them rolls no further (constants.ROLL_FREE); None: never turned
    recrop: bool = True           # a face the detector found gets a second pass, cropped from the first pass's
                                  # landmarks (the first pass at FIRST_PASS_VIEWS). Pseudo real set (mean of the
                                  # sources, the shipped model at zoom 1.15, stop 25): 3.35 % NME with the detector's
                                  # crops alone, 3.10 % with the second pass; real photos: the model card's
                                  # detector-crop table
    surround_blur: float | None = SURROUND_BLUR   # with recrop, the second pass's zoomed views run once more
                                                  # with the crop's surround blurred outside the first pass's
                                                  # landmark hull grown by this factor; they give the surface but
                                                  # for the jaw line; the wide view and the texture keep the sharp
                                                  # photo; None: off (constants.SURROUND_BLUR, JAW_SHARP)
    refine: bool = False          # opt-in: the refiner (core.refine; the shipped one redraws the mouth from a
                                  # close-up patch, so smiles and puckers show) after the views are merged
                                  # (FaceReconstructor's ``refiner``); off by default, REFINER_CARD.md says why
    texture_size: int | None = None   # the UV texture's side in texels; None: per face, the smallest of 256, 512, ...
                                      # constants.TEXTURE_MAX whose texels span at most one photo pixel
                                      # (texture_side); the add-on's video makes only its first face's
                                      # (core.video.iter_video's ``textures``)

    @property
    def views(self) -> tuple[tuple[float, float], ...]:
        """(side multiple, turn in degrees) of each view of a crop: every scale at every turn."""
        return tuple((k, a) for k in self.scales for a in self.turns)


class PRNPredictor:
    """Network wrapper: (B,256,256,3) float crops in [0,1] -> (B,256,256,3) crop-space position maps."""

    def __init__(self, weights=None, device: str = "auto", options: InferenceOptions | None = None):
        self.device = pick_device(device)
        self.options = options or InferenceOptions()
        self.model, self.layout, self.meta = load_model(weights, device=self.device)
        if self.options.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def to(self, device: str | torch.device) -> "PRNPredictor":
        self.device = torch.device(device)
        self.model = self.model.to(self.device)
        return self

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm normalizes with the training statistics. Blending in those of the image's own views (test-time
        # adaptation to real photos; stop 34, pseudo real set 3.002 % so): 3 % of them 3.871, 20 % 8.532. Nor do
        # statistics of many real faces help (AdaBN, stop 43: 4,170 crops of 417 video frames): NME2D on other
        # people's photos +1.96 points (every layer), +0.69 (half-blended), +0.86 (encoder only); on the clips
        # themselves +0.94, +0.25, -0.05. Nor does normalising the photo's colours first (stop 46, pseudo real set,
        # change in NME by the 3DDFA_V2 label box): grey-world white balance -0.04 [-0.16, +0.07], CLAHE on
        # lightness +0.14, luminance auto-levels +0.23. Nor does the crops' sharpness matter (stop 47, pseudo real
        # set, eval.py's mean of the sources): the crops that shrink the photo area-filtered first, against
        # crop.warp's bilinear reads, +0.001 [-0.002, +0.005] (the set's crops shrink it x2.2 at most), and on its
        # faces upscaled x4 with pixel noise +0.003 [-0.018, +0.022]; every crop Gaussian-blurred (sigma 0.8 px)
        # +0.008 [-0.036, +0.049]
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.float16 if cuda else torch.bfloat16,
                            enabled=self.options.amp and (cuda or cpu_bf16())):
            return self.model(x).float()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        out = []
        bs = self.options.batch_size
        for i in range(0, len(crops), bs):
            x = torch.from_numpy(np.ascontiguousarray(crops[i:i + bs].transpose(0, 3, 1, 2))).float()
            try:
                y = self._run(x.to(self.device))
            except torch.cuda.OutOfMemoryError:
                warnings.warn("CUDA out of memory: falling back to the CPU")
                torch.cuda.empty_cache()
                self.to("cpu")
                y = self._run(x)
            out.append(y.cpu().numpy().transpose(0, 2, 3, 1) * POS_SCALE)
        return np.concatenate(out) if out else np.zeros((0, RESOLUTION, RESOLUTION, 3), np.float32)


class FaceReconstructor:
    """Callable reconstruction API. ``weights``: path or None (shipped default); ``device``: auto/cuda/cpu;
    ``detector``: 'auto' | 'yuface' | 'haar' | 'yunet:PATH' | a Detector instance."""

    def __init__(self, weights=None, device: str = "auto", detector: str | Detector = "auto",
                 max_faces: int = 8, options: InferenceOptions | None = None, refiner=None):
        self.predictor = PRNPredictor(weights, device, options)
        #: the refiner (core.refine) ``options.refine`` runs: ``refiner``, a weights path, else the shipped one when
        #: it exists and fits the network's layout; None without one or with ``options.refine`` off
        self.refiner: Refiner | None = None
        if self.predictor.options.refine:
            if refiner:
                self.refiner = Refiner(refiner, self.predictor.layout, self.device)
            elif DEFAULT_REFINER.is_file():
                try:
                    self.refiner = Refiner(DEFAULT_REFINER, self.predictor.layout, self.device)
                except WeightsError:          # the shipped refiner is for another layout than these weights'
                    pass
        #: the network's layout reading the landmarks where the weights say (weights.landmark_layout): the results'
        #: landmarks; the surface, its mirror averaging and the periphery's hull keep the network's own layout
        self.layout: UVLayout = landmark_layout(self.predictor.meta["meta"], self.predictor.layout)
        self._detector_spec = detector
        self._detector = detector if isinstance(detector, Detector) else None
        self.max_faces = max_faces
        # pose and confidence from 2000 vertices spread over the face proper: the neck is loosely supervised (weight 0
        # or small in the loss) and its shape varies with the head's pitch, so it would bias the fit
        face = np.flatnonzero(self.layout.regions.reshape(-1)[self.layout.face_ind] != REGION_NECK)
        self._fit_idx = face[np.linspace(0, len(face) - 1, 2000).astype(int)]
        o = self.predictor.options
        #: crop zoom (see InferenceOptions.zoom); calibrate_zoom sets it to each candidate on one reconstructor
        self.zoom = float(o.zoom) if o.zoom is not None else inference_zoom(self.predictor.meta["meta"])
        self._inner = hull_weight(self.predictor.layout, self.layout)[..., None]
        self._jaw_free = jaw_weight(self.predictor.layout, self.layout)[..., None]   # see options.surround_blur
        # the part of those inside the landmarks' hull (where the zoomed views alone give the surface): it places a
        # carried periphery (carry_periphery)
        core = self._fit_idx[self.layout.vertices(np.repeat(self._inner, 3, -1))[self._fit_idx, 0] >= 1]
        self._core_pixels = self.layout.face_ind[core]                 # flat position-map indices

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = make_detector(self._detector_spec)
        return self._detector

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def crop_angle(self, face: FaceResult) -> float:
        """CropTransform.angle for a crop made from ``face``'s landmarks: the head's roll in the image beyond
        +-``options.roll_free`` degrees (0 within it); when that is None, the angle of ``face``'s own crop (0, or the
        quarter turns of a detection in an EXIF-turned photo)."""
        free = self.predictor.options.roll_free
        if free is None:
            return float(face.crop.angle)
        a = -float(face.pose.roll)                  # the eye line's angle in the image (y down)
        return a - float(np.clip(a, -free, free))

    def crop_landmarks(self, face: FaceResult) -> np.ndarray:
        """(68,3) landmarks of ``face`` to make the second pass's crop from: read at the network's own layout
        pixels, which the crop convention and the zoom were calibrated with, wherever ``face.landmarks`` is read
        (weights.landmark_layout)."""
        return self.predictor.layout.landmarks(face.position_map)

    def _recrop(self, img: np.ndarray, face: FaceResult) -> CropTransform:
        """The second pass's crop of a first-pass ``face`` (``options.recrop``): made from its landmarks at the
        network's own pixels (crop_landmarks), turned by crop_angle."""
        return self.crops_for(img, landmarks=self.crop_landmarks(face), angle=self.crop_angle(face))[0]

    @staticmethod
    def _load(image, turns: int | None) -> tuple[np.ndarray, int]:
        """(``image`` as an RGB array, the quarter turns the detector looks at it with: ``turns``, else the file's
        EXIF orientation when ``image`` is a path, image_io.upright_turns, else 0)."""
        if turns is None:
            turns = upright_turns(image) if isinstance(image, (str, os.PathLike)) else 0
        return load_image(image), turns

    def crops_for(self, image: np.ndarray, box=None, landmarks=None, roi=None,
                  crop: CropTransform | None = None, angle: float = 0.0, turns: int = 0) -> list[CropTransform]:
        """The network's crops: ``crop`` as it is, a 3DDFA roi box as it is, or one made from 68 landmarks (turned
        by ``angle``, CropTransform.angle), a detector box, or the detector's boxes (found in the image turned by
        ``turns`` counter-clockwise quarter turns, image_io.upright_turns, and turned back), then zoomed about its
        centre by ``self.zoom``."""
        if crop is not None:
            return [crop]
        if roi is not None:
            from .crop import crop_from_roi
            return [crop_from_roi(roi)]
        if landmarks is not None:
            crops = [crop_from_landmarks(np.asarray(landmarks), angle=angle)]
        elif box is not None:
            crops = [crop_from_box(box)]
        else:
            up = np.ascontiguousarray(np.rot90(image, turns)) if turns % 4 else image
            crops = [turn_crop(crop_from_box(b), turns, image.shape) for b in self.detector(up)[: self.max_faces]]
        return [c.resized(1 / self.zoom) for c in crops]

    @staticmethod
    def _views_mean(pos_crop: list, vcrops: list, start: int, m: int) -> np.ndarray:
        """The mean of the ``m`` crop-space maps from ``start`` on, each un-cropped with its view's transform."""
        return np.mean([uncrop_position_map(pc, v) for pc, v in zip(pos_crop[start:start + m],
                                                                    vcrops[start:start + m])], axis=0)

    def _merge_flip(self, pos: np.ndarray, pos_mirrored: np.ndarray) -> np.ndarray:
        """Average a crop's position map with the un-mirrored prediction for the mirrored crop."""
        lay = self.predictor.layout
        v = lay.vertices(pos)
        vm = lay.vertices(pos_mirrored).copy()
        vm[:, 0] = (RESOLUTION - 1) - vm[:, 0]
        avg = 0.5 * (v + vm[lay.mirror_vertex])
        out = np.zeros_like(pos).reshape(-1, 3)
        out[lay.face_ind] = avg
        out = out.reshape(pos.shape)
        # the 68 landmarks average through the iBUG mirror map (exact semantic pairs): at the results' pixels
        # (weights.landmark_layout), then at the network's own, which the crops made from landmarks read
        for kl in dict.fromkeys((self.layout, lay)):
            km = kl.landmarks(pos_mirrored).copy()
            km[:, 0] = (RESOLUTION - 1) - km[:, 0]
            out[kl.kpt_xy[:, 1], kl.kpt_xy[:, 0]] = 0.5 * (kl.landmarks(pos) + km[list(IBUG68_MIRROR)])
        return out

    def __call__(self, image, box=None, landmarks=None, roi=None, crop: CropTransform | None = None,
                 texture: bool = True, periphery: bool | None = None,
                 carry: Sequence[tuple[FaceResult, float]] | None = None, turns: int | None = None
                 ) -> list[FaceResult]:
        """Reconstruct every face found (largest score first), or the one face in ``crop`` / ``roi`` / ``landmarks``
        / ``box`` (first given wins, in that order). Raises ReconstructionError when none is found. A face the
        detector found is run twice when ``options.recrop``: the second crop is made from the first pass's 68
        landmarks, as from given landmarks.

        ``periphery``: run the wide view for the surface outside the landmarks' hull (None = ``options.periphery``);
        its map is kept in ``FaceResult.wide_view``. ``carry``: earlier results of the same face that ran it (a
        video's key frames) with weights summing to 1: the surface outside the hull is the weighted mean of their
        wide views, each carried onto this face (``carry_periphery``), instead of this call's own wide view.

        ``turns``: the detector looks for faces in the image turned by this many counter-clockwise quarter turns
        (None: the file's EXIF orientation when ``image`` is a path, image_io.upright_turns, else 0); the crops and
        every result stay in the stored pixels' frame, which Blender shows."""
        t0 = time.perf_counter()
        img, turns = self._load(image, turns)
        crops = self.crops_for(img, box, landmarks, roi, crop, turns=turns)
        if not crops:
            raise ReconstructionError("no face found in the image")
        detect_ms = (time.perf_counter() - t0) * 1e3 / len(crops)
        first_ms = surround = None
        if self.predictor.options.recrop and crop is None and roi is None and landmarks is None and box is None:
            t = time.perf_counter()
            first = self._reconstruct(img, crops, False, detect_ms, FIRST_PASS_VIEWS, periphery=False, refine=False)
            crops = [self._recrop(img, f) for f in first]
            surround = [self.crop_landmarks(f) for f in first]
            first_ms = (time.perf_counter() - t) * 1e3 / len(crops)
        o = self.predictor.options
        results = self._reconstruct(img, crops, texture, detect_ms, o.views,
                                    o.periphery if periphery is None else periphery, carry, surround)
        if first_ms is not None:
            for r in results:
                r.timings["first_pass"] = first_ms
        return results

    def pick(self, image, rank: int = 1, texture: bool = True, periphery: bool | None = None,
             turns: int | None = None) -> tuple[FaceResult, int]:
        """The ``rank``-th face the detector finds in ``image``, counted largest first (result.largest_first), and
        how many faces it found. Only that face is reconstructed in full (``options.views``, texture, periphery):
        with several faces, all are ranked on a first pass (FIRST_PASS_VIEWS, no texture, no periphery, the pass
        ``options.recrop`` makes its second crop from anyway), so a group photo costs one face plus one cheap pass
        per face instead of a full reconstruction of every face. ``turns``: as in __call__. Raises
        ReconstructionError when no face is found or fewer than ``rank``."""
        if rank < 1:
            raise ValueError("rank counts from 1 (the largest face)")
        t0 = time.perf_counter()
        img, turns = self._load(image, turns)
        crops = self.crops_for(img, turns=turns)
        n = len(crops)
        if not n:
            raise ReconstructionError("no face found in the image")
        if rank > n:
            raise ReconstructionError(f"the image shows {n} face(s); face {rank} was asked for")
        detect_ms = (time.perf_counter() - t0) * 1e3
        o = self.predictor.options
        first_ms = None
        if n > 1 or o.recrop:
            t = time.perf_counter()
            first = self._reconstruct(img, crops, False, detect_ms, FIRST_PASS_VIEWS, periphery=False, refine=False)
            face = largest_first(first)[rank - 1]
            crops = [self._recrop(img, face) if o.recrop else face.crop]
            first_ms = (time.perf_counter() - t) * 1e3
        result = self._reconstruct(img, crops, texture, detect_ms, o.views,
                                   o.periphery if periphery is None else periphery,
                                   surround=[self.crop_landmarks(face)] if o.recrop else None)[0]
        if first_ms is not None:
            result.timings["first_pass"] = first_ms
        return result, n

    def _reconstruct(self, img: np.ndarray, crops: list[CropTransform], texture: bool, detect_ms: float,
                     views: tuple, periphery: bool, carry=None, surround=None, refine: bool = True
                     ) -> list[FaceResult]:
        """One pass of the network (each crop in ``views``, (side multiple, turn in degrees) pairs, and the wide
        view with ``periphery``; mirrored too when ``options.flip``) over ``crops`` of ``img``; ``carry``: see
        __call__. ``surround``: per crop, (68,2+) image-pixel landmarks of a first pass; with
        ``options.surround_blur`` the zoomed views run once more with their surround blurred outside those
        landmarks' hull, and give the surface but for the jaw line (constants.JAW_SHARP). ``refine``: run the
        refiner, when there is one (a first pass, which only places the second crop, does not)."""
        h, w = img.shape[:2]
        t1 = time.perf_counter()
        m = len(views)
        vcrops = [c.resized(k).turned(a) for c in crops for k, a in views]
        wide = [c.resized(self.zoom) for c in crops] if periphery and self.zoom > 1 else []
        nz = len(vcrops)                               # the zoomed views
        vcrops += wide
        batch = np.stack([warp(img, v) for v in vcrops])
        grow = self.predictor.options.surround_blur
        blurred = bool(grow) and surround is not None
        if blurred:                                    # the zoomed views again, blurred; the wide one stays sharp
            lm = np.stack([v.to_crop(np.asarray(surround[j // m])[:, :2]) for j, v in enumerate(vcrops[:nz])])
            x = torch.from_numpy(np.ascontiguousarray(batch[:nz].transpose(0, 3, 1, 2)))
            x = blur_surround(x, torch.from_numpy(lm).float(), torch.full((nz,), float(grow)))
            batch = np.concatenate([batch, x.numpy().transpose(0, 2, 3, 1)])
            vcrops += vcrops[:nz]
        t2 = time.perf_counter()
        if self.predictor.options.flip:
            nv = len(vcrops)
            both = self.predictor(np.concatenate([batch, batch[:, :, ::-1]]))
            pos_crop = [self._merge_flip(a, b) for a, b in zip(both[:nv], both[nv:])]
        else:
            pos_crop = list(self.predictor(batch))
        t3 = time.perf_counter()
        results = []
        for i, c in enumerate(crops):
            t4 = time.perf_counter()
            pos = self._views_mean(pos_crop, vcrops, i * m, m)
            if blurred:                                # the blurred views' surface, the sharp views' jaw line
                pos = self._jaw_free * self._views_mean(pos_crop, vcrops, nz + len(wide) + i * m, m) \
                    + (1 - self._jaw_free) * pos
            tr = time.perf_counter()
            if refine and self.refiner is not None:
                pos = self.refiner(img, pos)
            refine_s = time.perf_counter() - tr
            wide_map = None
            if wide:
                j = nz + i
                wide_map = uncrop_position_map(pos_crop[j], vcrops[j])
            # the confidence is that of the zoomed views' face, whatever gives the periphery (a wide view run now,
            # one carried from a key frame, or none): a video's tracking decisions must not depend on it
            pose, resid = estimate_pose(self.layout.vertices(pos), self.layout.canonical, self._fit_idx)
            if carry:
                outer = sum(wt * self.carry_periphery(key, pos) for key, wt in carry)
                pos = self._inner * pos + (1 - self._inner) * outer
            elif wide_map is not None:
                pos = self._inner * pos + (1 - self._inner) * wide_map
            verts = self.layout.vertices(pos)
            # read straight off the network's surface. Pseudo real set, stop 34 (3.002 % so): the surface projected
            # onto the ICT model's span first (similarity + 153 modes, ridge) 3.23-3.32; turned further about the
            # head's vertical axis, to add back the yaw the network under-estimates on real faces (model card:
            # Limits), by 3-15 % of its yaw 3.03-3.51, by 10-50 % of its yaw beyond 15 deg 3.10-3.97. Stop 46, the
            # projection again (default views; ridge x1-x100; landmarks off the fit, or half-way to them): +0.18 to
            # +0.79 points on the 3DDFA_V2 labels, +0.29 to +0.88 on MediaPipe's (NME by the label box); the surface
            # on real faces sits 4-5 px rms off that span (and off a similarity: training has perspective cameras)
            lms = self.layout.landmarks(pos)
            if carry or wide_map is not None:          # the head pose sees the periphery it shows
                pose = estimate_pose(verts, self.layout.canonical, self._fit_idx)[0]
            t5 = time.perf_counter()
            if texture:
                colors, tex, tmask, depth = texture_from_image(img, pos, verts, self.layout,
                                                                self.predictor.options.texture_size)
            else:
                colors = np.zeros_like(verts)
                tex = np.zeros((RESOLUTION, RESOLUTION, 3), np.float32)
                tmask = np.zeros((RESOLUTION, RESOLUTION), bool)
                depth = np.full((h, w), np.nan, np.float32)
            t6 = time.perf_counter()
            inside = np.mean((lms[:, 0] >= 0) & (lms[:, 0] < w) & (lms[:, 1] >= 0) & (lms[:, 1] < h))
            conf = float(np.exp(-(resid / CONFIDENCE_RESIDUAL) ** 2) * inside)
            n = len(crops)
            timings = {"detect": detect_ms, "crop": (t2 - t1) * 1e3 / n, "net": (t3 - t2) * 1e3 / n,
                       "uncrop": (t5 - t4 - refine_s) * 1e3, "refine": refine_s * 1e3, "texture": (t6 - t5) * 1e3}
            results.append(FaceResult(position_map=pos, vertices=verts, triangles=self.layout.triangles,
                                      uvs=self.layout.uvs, landmarks=lms, pose=pose, colors=colors, texture=tex,
                                      texture_mask=tmask, depth=depth, crop=c, confidence=conf,
                                      layout=self.layout.name, image_size=(w, h), timings=timings,
                                      wide_view=wide_map))
        return results

    def carry_periphery(self, key: FaceResult, pos: np.ndarray) -> np.ndarray:
        """The wide view of an earlier result ``key`` (image pixels of its frame) moved by the similarity that best
        takes ``key``'s surface inside the landmarks' hull (its zoomed view's) onto that of ``pos`` (this frame's
        position map, the zoomed view's): the forehead, ears and neck follow the head as a rigid body (non-rigid
        change out there is not followed). The fit compares the same view's predictions, so on ``key``'s own
        frame the move is the identity."""
        if key.wide_view is None:
            raise ValueError("carry_periphery needs a result that ran the wide view (FaceResult.wide_view)")
        px = self._core_pixels
        s, R, t, _ = umeyama(key.position_map.reshape(-1, 3)[px].astype(np.float64),
                             pos.reshape(-1, 3)[px].astype(np.float64))
        ref = key.wide_view
        return (ref.reshape(-1, 3) @ (s * R).T.astype(np.float32) + t.astype(np.float32)).reshape(ref.shape)


def jaw_weight(*layouts: UVLayout, band: tuple[float, float] = JAW_SHARP) -> np.ndarray:
    """(256,256) float32 UV weight: 0 within ``band[0]`` UV pixels of the polyline through the jaw landmark pixels
    (0-16) of any of the layouts, rising linearly to 1 at ``band[1]`` pixels from it."""
    line = np.full((RESOLUTION, RESOLUTION), 255, np.uint8)
    for lay in layouts:
        cv2.polylines(line, [lay.kpt_xy[:17].astype(np.int32).reshape(-1, 1, 2)], False, 0, 1)
    dist = cv2.distanceTransform(line, cv2.DIST_L2, 5)
    return np.clip((dist - band[0]) / (band[1] - band[0]), 0, 1).astype(np.float32)


def hull_weight(*layouts: UVLayout, fade: float = PERIPHERY_FADE) -> np.ndarray:
    """(256,256) float32 UV weight: 1 inside the convex hull of the layouts' 68 landmark pixels (the network's own
    and, with calibrated landmark pixels, those too, so no landmark is in the periphery's fade), falling linearly
    to 0 at ``fade`` UV pixels outside it."""
    inside = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    pts = np.concatenate([lay.kpt_xy for lay in layouts]).astype(np.int32)
    cv2.fillConvexPoly(inside, cv2.convexHull(pts), 1)
    dist = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return np.clip(1 - dist / fade, 0, 1).astype(np.float32)


def _sample(img: np.ndarray, xy: np.ndarray, spacing: float, border: int = cv2.BORDER_CONSTANT,
            valid: np.ndarray | None = None) -> np.ndarray:
    """Bilinear samples (H,W,3) of the image at the image-pixel points ``xy`` (H,W,2), ``spacing`` image pixels
    apart. Where samples are more than a pixel apart they read an area-filtered copy of the image region under the
    points (the ``valid`` ones, default all) shrunk by ``spacing``: bilinear reads of the full resolution would
    alias there, each seeing only its 2x2 nearest pixels of a larger footprint."""
    if spacing > 1.0:
        h, w = img.shape[:2]
        pts = xy.reshape(-1, 2) if valid is None else xy[valid]
        if len(pts):
            x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 2, 0)
            x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 3, (w, h))
            if x1 > x0 and y1 > y0:
                sw, sh = max(round((x1 - x0) / spacing), 1), max(round((y1 - y0) / spacing), 1)
                fx, fy = sw / (x1 - x0), sh / (y1 - y0)
                img = cv2.resize(img[y0:y1, x0:x1], (sw, sh), interpolation=cv2.INTER_AREA)
                xy = np.stack([(xy[..., 0] - x0 + 0.5) * fx - 0.5, (xy[..., 1] - y0 + 0.5) * fy - 0.5], -1)
    return cv2.remap(img, xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=border, borderValue=0)


def _bilinear(img: np.ndarray, xy: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """(N,3) samples at the (N,2) image-pixel points ``xy``, ``spacing`` apart (_sample), edge pixels beyond."""
    n = len(xy)
    cols = 512                                   # cv2.remap maps must stay below 32767 on each side
    m = np.zeros((-(-n // cols) * cols, 2), np.float32)
    m[:n] = xy
    valid = np.zeros(len(m), bool)
    valid[:n] = True
    out = _sample(img, m.reshape(-1, cols, 2), spacing, cv2.BORDER_REPLICATE, valid.reshape(-1, cols))
    return out.reshape(-1, 3)[:n]


def texel_spacing(pos: np.ndarray, layout: UVLayout) -> float:
    """Median distance, in image pixels, between neighbouring face pixels of the (256,256,3) image-space position
    map ``pos`` (x, y pixels): how much of the photo one texel of a 256-texel UV texture spans."""
    xy, m = pos[..., :2], layout.mask
    d = np.concatenate([np.linalg.norm(xy[:, 1:] - xy[:, :-1], axis=-1)[m[:, 1:] & m[:, :-1]],
                        np.linalg.norm(xy[1:] - xy[:-1], axis=-1)[m[1:] & m[:-1]]])
    return float(np.median(d)) if len(d) else 1.0


def texture_side(spacing: float, size: int | None = None) -> int:
    """The UV texture's side in texels: ``size`` when given, else the smallest of RESOLUTION x 1, 2, 4, ... up to
    TEXTURE_MAX whose texels span at most one photo pixel, for a face whose 256-texel spacing is ``spacing``
    (texel_spacing)."""
    if size:
        return int(size)
    k = max(0, math.ceil(math.log2(max(spacing, 1e-6))))
    return int(min(TEXTURE_MAX, RESOLUTION * 2 ** k))


def texture_from_image(img: np.ndarray, pos: np.ndarray, verts: np.ndarray, layout: UVLayout,
                       size: int | None = None):
    """Per-vertex colours, UV texture (T,T,3), its visibility mask (T,T) (z-buffer test) and an image-size depth
    map (nan off the face). The z-buffer is splatted from the vertices on a grid no finer than the vertex spacing.
    T = ``size``, or by default (texture_side) the smallest power-of-two multiple of 256 up to TEXTURE_MAX at which
    a texel spans at most one photo pixel: a high-resolution photo keeps its detail; a larger T samples the position
    map bilinearly between its pixels (texels between the mesh's vertices), and its mask is where all four
    neighbouring face pixels are seen. Samples further apart than a photo pixel read an area-filtered photo
    (_sample), so neither the texture nor the colours alias."""
    h, w = img.shape[:2]
    spacing = texel_spacing(pos, layout)
    side = texture_side(spacing, size)
    colors = _bilinear(img, verts[:, :2], spacing)
    x0, y0 = np.floor(verts[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(verts[:, :2].max(0)).astype(int)
    span = max(x1 - x0, y1 - y0, 1)
    cell = max(1.0, span / 160.0)          # ~160 cells across the face: the vertex grid is denser than that
    gx = ((verts[:, 0] - x0) / cell).astype(int)
    gy = ((verts[:, 1] - y0) / cell).astype(int)
    gw, gh = gx.max() + 1, gy.max() + 1
    zb = np.full(gh * gw, -np.inf, np.float32)
    np.maximum.at(zb, gy * gw + gx, verts[:, 2].astype(np.float32))
    zb = zb.reshape(gh, gw)
    tol = 0.04 * span
    visible = verts[:, 2] >= zb[gy, gx] - tol
    seen = np.zeros(RESOLUTION * RESOLUTION, bool)
    inside = (verts[:, 0] >= 0) & (verts[:, 0] < w) & (verts[:, 1] >= 0) & (verts[:, 1] < h)
    seen[layout.face_ind] = visible & inside
    seen = seen.reshape(RESOLUTION, RESOLUTION)
    if side == RESOLUTION:
        xy, tmask = pos[..., :2], seen
    else:
        xy = cv2.resize(np.ascontiguousarray(pos[..., :2], np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
        tmask = cv2.resize(seen.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR) > 0.999
    tex = _sample(img, xy, spacing * RESOLUTION / side, valid=tmask) * tmask[..., None]
    depth = np.full((h, w), np.nan, np.float32)
    zimg = np.where(np.isfinite(zb), zb, np.nan).astype(np.float32)
    bw, bh = int(round(gw * cell)), int(round(gh * cell))
    if bw > 0 and bh > 0:
        up = cv2.resize(zimg, (bw, bh), interpolation=cv2.INTER_NEAREST)
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + bw, w), min(y0 + bh, h)
        if xb > xa and yb > ya:
            depth[ya:yb, xa:xb] = up[ya - y0:yb - y0, xa - x0:xb - x0]
    return colors.astype(np.float32), tex.astype(np.float32), tmask, depth
