"""Weights files: a safetensors file whose metadata records architecture width, UV layout and provenance.

Shipped default: ``prn_blender/assets/weights/prn-ict-default.safetensors`` (see MODEL_CARD.md beside it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .constants import INFERENCE_ZOOM
from .layout import LayoutError, UVLayout, load_layout
from .network import ResFCN256
from .paths import WEIGHTS_DIR

DEFAULT_WEIGHTS = WEIGHTS_DIR / "prn-ict-default.safetensors"
SHIPPED_DTYPE = torch.float16      # the tensors of shipped weights (train.ship, soup --fp16) and save_weights' default


class WeightsError(RuntimeError):
    """Weights are missing, unreadable, or do not match the network/layout."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model: ResFCN256, path: str | Path, layout: str, meta: dict | None = None,
                 dtype: torch.dtype = SHIPPED_DTYPE) -> Path:
    """Write the model's state (floating tensors cast to ``dtype``) plus metadata. Atomic: readers (a viewer, a
    snapshot copy) never see a half-written file."""
    from safetensors.torch import save_file
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    md = {"format": "prn_blender-1", "width": str(model.width), "layout": layout,
          "meta": json.dumps(meta or {}, sort_keys=True)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=md)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


def inference_zoom(meta: dict) -> float:
    """The inference crop zoom a weights file's ``meta`` records (``inference_zoom``: what
    ``python -m prn_blender.evaluate.calibrate_zoom`` measured for that model and ``ship --zoom`` wrote; an imported
    PRNet checkpoint records 1, its own crops), else constants.INFERENCE_ZOOM (calibrated for this project's models)."""
    z = float(meta.get("inference_zoom", INFERENCE_ZOOM))
    if not 0.5 <= z <= 2.0:
        raise WeightsError(f"the weights record an inference zoom of {z:g}; expected 0.5-2")
    return z


def landmark_layout(meta: dict, layout: UVLayout) -> UVLayout:
    """``layout`` reading its 68 landmarks at the UV pixels a weights file's ``meta`` records (``landmark_uv``, (68,2)
    x, y: what ``python -m prn_blender.evaluate.calibrate_landmarks`` fitted on real faces, where the network's
    surface meets the iBUG-68 annotation convention), else ``layout`` itself. The surface is the same; only which
    vertex each landmark is changes. Raises WeightsError when the pixels are malformed or off the layout's face."""
    uv = meta.get("landmark_uv")
    if uv is None:
        return layout
    xy = np.asarray(uv)
    if xy.shape != (68, 2) or not np.issubdtype(xy.dtype, np.integer):
        raise WeightsError(f"the weights' landmark_uv must be 68 integer (x, y) UV pixels, got shape {xy.shape}")
    if not (((xy >= 0) & (xy < layout.mask.shape[0])).all() and layout.mask[xy[:, 1], xy[:, 0]].all()):
        raise WeightsError(f"the weights' landmark_uv has pixels off the {layout.name} face")
    return dataclasses.replace(layout, kpt_xy=xy.astype(np.int32))


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            md = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise WeightsError(f"cannot read weights {path}: {e}") from e
    if md.get("format") != "prn_blender-1":
        raise WeightsError(f"{path} is not a prn_blender weights file (metadata: {md})")
    md["meta"] = json.loads(md.get("meta", "{}"))
    return md


def load_model(path: str | Path | None = None, layout: UVLayout | str | None = None,
               device: str | torch.device = "cpu") -> tuple[ResFCN256, UVLayout, dict]:
    """Build the network from a weights file; returns (model in eval mode, its layout, metadata).
    Raises WeightsError when the file is missing/malformed or trained for a different layout than ``layout``."""
    from safetensors.torch import load_file
    path = Path(path) if path else DEFAULT_WEIGHTS
    md = read_metadata(path)
    want = layout.name if isinstance(layout, UVLayout) else layout
    if want and want != md["layout"]:
        raise WeightsError(f"{path.name} was trained for UV layout {md['layout']!r}, not {want!r}")
    try:
        lay = layout if isinstance(layout, UVLayout) else load_layout(md["layout"])
    except LayoutError as e:
        raise WeightsError(str(e)) from e
    model = ResFCN256(int(md["width"]))
    sd = load_file(str(path))
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{path.name} does not fit ResFCN256(width={md['width']}): {e}") from e
    missing = [k for k in model.state_dict() if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path.name} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return model.to(device).eval(), lay, md
