"""The 3DDFA_V2 mb05 peer reproduces the measured 3.36 % 2D NME on the 16 shared AFLW2000-3D images."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def peer(shared):
    import torch
    torch.set_num_threads(1)
    from prn_blender.evaluate.peer_3ddfa import TDDFAPeer
    return TDDFAPeer(shared=shared)


def test_peer_weights_load_and_output_shape(peer):
    import torch
    n = sum(p.numel() for p in peer.net.parameters())
    assert 400_000 < n < 1_000_000          # MobileNetV1 x0.5 (+ the unused fc_lm head)
    with torch.no_grad():
        assert peer.net(torch.zeros(1, 3, 120, 120)).shape == (1, 62)


def test_peer_nme_16_shared_images(peer, shared):
    import cv2
    from prn_blender.evaluate import metrics as M
    samples = M.load_aflw2000(shared / "aflw2000-3d")
    assert len(samples) == 16
    errs = []
    for s in samples:
        pred = peer.predict_roi(cv2.imread(str(s["image"])), s["roi"])
        assert pred.shape == (68, 3) and pred.dtype == np.float32
        errs.append(M.nme(pred[:, :2], s["gt"][:, :2], dims=2))
    b = M.yaw_buckets(errs, [s["yaw"] for s in samples])
    assert b["all"] == pytest.approx(3.36, abs=0.05)
    assert np.isfinite(b["mean"])
