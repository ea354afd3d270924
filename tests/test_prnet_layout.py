"""The prnet-bfm layout asset is reproducible from PRNet's uv-data."""
from __future__ import annotations

import numpy as np
import pytest

from prn_blender.core.constants import REGION_EYES, REGION_FACE, REGION_LANDMARK
from prn_blender.core.layout import load_layout


def test_asset_loads():
    lay = load_layout("prnet-bfm")
    assert lay.name == "prnet-bfm" and lay.n_vertices == 43_867
    assert (lay.regions[lay.kpt_xy[:, 1], lay.kpt_xy[:, 0]] == REGION_LANDMARK).all()
    assert (lay.regions == REGION_LANDMARK).sum() == 68
    c = lay.canonical
    kv = lay.kpt_vertex
    assert c[kv[30], 2] > c[kv[8], 2] and c[kv[30], 1] > c[kv[8], 1]      # nose in front of and above the chin
    assert c[kv[45], 0] > c[kv[36], 0]                                      # x to the subject's left
    v = c.astype(np.float64)
    t = lay.triangles
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    assert (n[:, 2] > 0).mean() > 0.75                                      # triangles face +z


@pytest.mark.shared
def test_rebuild_matches_asset(shared):
    from prn_blender.synth.prnet_layout import build_prnet_layout
    new, old = build_prnet_layout(shared), load_layout("prnet-bfm")
    assert new.n_vertices == 43_867
    for k in ("mask", "face_ind", "triangles", "kpt_xy", "regions"):
        np.testing.assert_array_equal(getattr(new, k), getattr(old, k), err_msg=k)
    np.testing.assert_allclose(new.canonical, old.canonical, atol=1e-5)
    assert new.name == old.name == "prnet-bfm"
    counts = {r: int((new.regions[new.mask] == r).sum()) for r in (REGION_LANDMARK, REGION_EYES, REGION_FACE)}
    assert counts[REGION_LANDMARK] == 68 and sum(counts.values()) == 43_867
