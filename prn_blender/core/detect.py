"""Face detectors returning boxes (x0, y0, x1, y1, score) in image pixels, calibrated to PRN's crop convention.

* ``yuface`` (default; libfacedetection, BSD, weights inside its wheel): its box is larger and higher than the
  68-point box, so it is mapped to a "PRN detector box" before ``crop_from_box`` (calibrated against AFLW2000-3D GT).
* ``yunet:PATH`` (OpenCV FaceDetectorYN with a user-supplied ONNX), ``haar`` (OpenCV cascades; last resort).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .constants import BOX_CENTER_SHIFT, BOX_CROP_SCALE, KPT_CROP_SCALE


@dataclass(frozen=True)
class BoxCalibration:
    """Map a detector box to the box whose PRN crop (centre shift 0.14, x1.58) equals the 68-point GT crop:
    centre += (dx, dy) * size, size *= s (size = mean box side)."""
    dx: float = 0.0
    dy: float = 0.0
    s: float = 1.0

    def apply(self, box) -> np.ndarray:
        x0, y0, x1, y1 = map(float, box[:4])
        size = (x1 - x0 + y1 - y0) / 2
        cx, cy = (x0 + x1) / 2 + self.dx * size, (y0 + y1) / 2 + self.dy * size
        half = size * self.s / 2
        return np.array([cx - half, cy - half, cx + half, cy + half], np.float64)


# yuface boxes vs the GT 68-point box, measured on 45 synthetic faces (seed 5) by
# `python -m prn_blender.synth.calibrate_detector`; the 16 AFLW2000 images agree (0.035, 0.024, 0.902).
YUFACE_CALIBRATION = BoxCalibration(dx=-0.002, dy=0.009, s=0.881)


class DetectorError(RuntimeError):
    pass


class Detector:
    name = "base"
    calibration = BoxCalibration()

    def detect_raw(self, bgr_u8: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(K,5) calibrated boxes sorted by score (largest first) for a float RGB [0,1] image."""
        bgr = cv2.cvtColor((np.clip(rgb, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        raw = self.detect_raw(bgr)
        if len(raw) == 0:
            return np.zeros((0, 5))
        out = np.array([np.r_[self.calibration.apply(b), b[4]] for b in raw])
        return out[np.argsort(-out[:, 4])]


class YuFaceDetector(Detector):
    name = "yuface"
    calibration = YUFACE_CALIBRATION

    def __init__(self, min_score: float = 0.5):
        import yuface  # noqa: F401 - fail early with ImportError
        self.min_score = min_score

    def detect_raw(self, bgr):
        import yuface
        h, w = bgr.shape[:2]
        scale = 1.0
        if max(h, w) > 800:   # detector is fast at ~640 px; keep big photos tractable
            scale = 640.0 / max(h, w)
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        confs, bbs = yuface.detect(np.ascontiguousarray(bgr))[:2]   # scores 0..100, boxes (x, y, w, h)
        boxes = []
        for c, (x, y, bw, bh) in zip(np.asarray(confs, float).ravel(), np.asarray(bbs, float).reshape(-1, 4)):
            if c / 100.0 >= self.min_score:
                boxes.append([x / scale, y / scale, (x + bw) / scale, (y + bh) / scale, c / 100.0])
        return np.array(boxes).reshape(-1, 5)


class YuNetDetector(Detector):
    name = "yunet"

    def __init__(self, model_path: str, min_score: float = 0.6):
        self.path, self.min_score = str(model_path), min_score

    def detect_raw(self, bgr):
        h, w = bgr.shape[:2]
        det = cv2.FaceDetectorYN.create(self.path, "", (w, h), self.min_score)
        _, faces = det.detect(bgr)
        if faces is None:
            return np.zeros((0, 5))
        return np.array([[f[0], f[1], f[0] + f[2], f[1] + f[3], f[14]] for f in faces])


class HaarDetector(Detector):
    name = "haar"

    def __init__(self):
        self.cc = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def detect_raw(self, bgr):
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        faces = self.cc.detectMultiScale(gray, 1.1, 5, minSize=(24, 24))
        return np.array([[x, y, x + w, y + h, 1.0] for x, y, w, h in faces]).reshape(-1, 5)


def make_detector(spec: str = "auto") -> Detector:
    """'auto' (yuface, else haar), 'yuface', 'haar', or 'yunet:/path/model.onnx'."""
    if spec.startswith("yunet:"):
        return YuNetDetector(spec.split(":", 1)[1])
    if spec in ("auto", "yuface"):
        try:
            return YuFaceDetector()
        except ImportError:
            if spec == "yuface":
                raise DetectorError("the yuface package is not installed")
    if spec in ("auto", "haar"):
        return HaarDetector()
    raise DetectorError(f"unknown detector {spec!r}")


def gt_box_to_detector_box(kpt: np.ndarray) -> np.ndarray:
    """The detector-style box whose PRN crop (shift 0.14, x1.58) equals the landmark crop (x1.6, no shift)."""
    lo, hi = kpt[:, :2].min(0), kpt[:, :2].max(0)
    old = (hi - lo).sum() / 2
    size = old * KPT_CROP_SCALE / BOX_CROP_SCALE
    c = (lo + hi) / 2 - np.array([0, BOX_CENTER_SHIFT * size])
    return np.r_[c - size / 2, c + size / 2]
