"""Test infrastructure: sandboxed Blender user resources (before any bpy import), markers, an empty scene per
bpy test, shared-data skips, and the os._exit hook that avoids bpy 4.5's exit hang."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

_SANDBOX = tempfile.mkdtemp(prefix="prn_blender_test_user_")
os.environ["BLENDER_USER_RESOURCES"] = _SANDBOX           # must precede `import bpy`
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prn_blender.core.paths import shared_dir  # noqa: E402

SHARED = shared_dir(required=False)
_STATUS = {"code": 0}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still part of the default suite)")
    config.addinivalue_line("markers", "shared: needs the development data folder ../shared")
    config.addinivalue_line("markers", "bpy: needs the bpy module")


def pytest_collection_modifyitems(config, items):
    if SHARED is None:
        skip = pytest.mark.skip(reason="../shared (development data) not present; set PRN_BLENDER_SHARED")
        for it in items:
            if "shared" in it.keywords:
                it.add_marker(skip)


@pytest.fixture(scope="session")
def shared() -> Path:
    if SHARED is None:
        pytest.skip("../shared (development data) not present; set PRN_BLENDER_SHARED")
    return SHARED


@pytest.fixture
def sideways_clip(tmp_path) -> tuple[Path, np.ndarray]:
    """(an MP4 whose frames are stored turned a quarter clockwise, with the rotation metadata a phone writes to show
    them upright; the upright 96x128 frame): the frame is black with a white square in its top-left corner."""
    import struct

    import cv2
    up = np.zeros((128, 96, 3), np.uint8)
    up[8:32, 8:32] = 255
    path = tmp_path / "sideways.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    assert vw.isOpened()
    for _ in range(6):
        vw.write(np.ascontiguousarray(np.rot90(up, -1)))
    vw.release()
    b = bytearray(path.read_bytes())
    i = b.index(b"tkhd")
    assert b[i + 4] == 0                                      # version 0: 32-bit times
    m = i + 4 + 4 + 20 + 8 + 8                                # flags, times/ids/duration, reserved, layer..volume
    assert struct.unpack(">9i", b[m:m + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    b[m:m + 36] = struct.pack(">9i", 0, -0x10000, 0, 0x10000, 0, 0, 0, 128 << 16, 0x40000000)   # show turned back
    path.write_bytes(bytes(b))
    return path, up


@pytest.fixture
def bpy_empty():
    """bpy with a fresh empty scene."""
    import bpy
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    return bpy


def pytest_sessionfinish(session, exitstatus):
    _STATUS["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if "bpy" in sys.modules:
        import shutil
        try:
            import bpy
            shutil.rmtree(bpy.app.tempdir, ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr._tw.flush() if hasattr(tr, "_tw") else None
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_STATUS["code"])
