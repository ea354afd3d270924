"""Test infrastructure: sandboxed Blender user resources (before any bpy import), markers, an empty scene per
bpy test, shared-data skips, and the os._exit hook that avoids bpy 4.5's exit hang."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

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
