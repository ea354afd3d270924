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


def mp4_boxes(b: bytes, box_path: str) -> list[tuple[int, int]]:
    """(start, size) of each box down ``box_path`` ("moov/trak/tkhd") in the MP4 bytes ``b``, outermost first: the
    boxes are walked by their sizes, so bytes of the media data never pass for a box."""
    import struct
    out, lo, hi = [], 0, len(b)
    for name in box_path.split("/"):
        while True:
            assert lo + 8 <= hi, f"no {name} box"
            size, kind = struct.unpack(">I4s", b[lo:lo + 8])
            if kind == name.encode():
                break
            lo += size
        out.append((lo, size))
        lo, hi = lo + 8, lo + size
    return out


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
    i = mp4_boxes(b, "moov/trak/tkhd")[-1][0]
    assert b[i + 8] == 0                                      # version 0: 32-bit times
    m = i + 8 + 4 + 20 + 8 + 8                                # flags, times/ids/duration, reserved, layer..volume
    assert struct.unpack(">9i", b[m:m + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    b[m:m + 36] = struct.pack(">9i", 0, -0x10000, 0, 0x10000, 0, 0, 0, 128 << 16, 0x40000000)   # show turned back
    path.write_bytes(bytes(b))
    return path, up


@pytest.fixture
def vfr_clip(tmp_path) -> tuple[Path, list[float]]:
    """(an MP4 with a variable frame rate, as phones record in low light: 30 frames, each a flat grey of level 8 * its
    index; 30 fps for frames 0-9 and 20-29, 15 fps for 10-19; their times in seconds). Written at 30 fps by OpenCV,
    then its sample table (stts) and durations are rewritten."""
    import struct

    import cv2
    path = tmp_path / "vfr.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    assert vw.isOpened()
    for i in range(30):
        vw.write(np.full((48, 64, 3), 8 * i, np.uint8))
    vw.release()
    b = bytearray(path.read_bytes())
    chain = mp4_boxes(b, "moov/trak/mdia/minf/stbl/stts")
    at, size = chain[-1]
    n, delta = struct.unpack(">II", b[at + 16:at + 24])
    assert struct.unpack(">I", b[at + 12:at + 16])[0] == 1 and n == 30   # one entry: 30 samples of one duration
    new = struct.pack(">I4sII", 8 + 8 + 3 * 8, b"stts", 0, 3) + struct.pack(">6I", 10, delta, 10, 2 * delta, 10, delta)
    b[at:at + size] = new
    for lo, sz in chain[:-1]:                       # the parents grow with it (moov follows mdat: no offsets move)
        b[lo:lo + 4] = struct.pack(">I", sz + len(new) - size)
    mdhd = mp4_boxes(b, "moov/trak/mdia/mdhd")[-1][0]
    assert b[mdhd + 8] == 0                         # version 0: 32-bit times; duration at +24 in media units
    b[mdhd + 24:mdhd + 28] = struct.pack(">I", 40 * delta)
    scale = struct.unpack(">I", b[mdhd + 20:mdhd + 24])[0]
    mvhd, tkhd = mp4_boxes(b, "moov/mvhd")[-1][0], mp4_boxes(b, "moov/trak/tkhd")[-1][0]
    movie_scale = struct.unpack(">I", b[mvhd + 20:mvhd + 24])[0]
    movie_dur = struct.pack(">I", round(40 * delta * movie_scale / scale))
    b[mvhd + 24:mvhd + 28] = movie_dur
    b[tkhd + 28:tkhd + 32] = movie_dur
    elst = mp4_boxes(b, "moov/trak/edts/elst")[-1][0]
    assert b[elst + 8] == 0 and struct.unpack(">I", b[elst + 12:elst + 16])[0] == 1     # one 32-bit edit
    b[elst + 16:elst + 20] = movie_dur             # the edit list shows the whole track, not its first second
    path.write_bytes(bytes(b))
    times = [(i + max(0, min(i, 20) - 10)) / 30 for i in range(30)]
    return path, times


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
