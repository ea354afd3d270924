"""Where data lives: the shipped assets inside the package and the optional development data folder.

The development data folder (``shared``) holds third-party data (ICT-FaceKit, AFLW2000-3D, peers). It is never
needed at run time by the add-on; the synthetic data engine, training and evaluation read it. Resolution order:
explicit argument > ``PRN_BLENDER_SHARED`` environment variable > ``../shared`` next to the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
LAYOUTS_DIR = ASSETS_DIR / "layouts"
WEIGHTS_DIR = ASSETS_DIR / "weights"
REPO_DIR = PACKAGE_DIR.parent
SHARED_ENV = "PRN_BLENDER_SHARED"


class SharedDataMissing(FileNotFoundError):
    """The development data folder (or a file inside it) is absent."""


def shared_dir(path: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Return the development data folder, or None / raise SharedDataMissing when it does not exist."""
    cand = Path(path) if path else Path(os.environ.get(SHARED_ENV) or (REPO_DIR.parent / "shared"))
    if cand.is_dir():
        return cand.resolve()
    if required:
        raise SharedDataMissing(
            f"development data folder not found at {cand} (set {SHARED_ENV} or pass --shared)")
    return None


def shared_file(rel: str, path: str | os.PathLike | None = None) -> Path:
    """A file inside the shared folder; raises SharedDataMissing with the path when absent."""
    f = shared_dir(path) / rel
    if not f.exists():
        raise SharedDataMissing(f"missing development data file {f}")
    return f
