"""Build and validate the prn_blender Blender extension with Blender's own extension tool.

    python build.py validate                       # Blender's validator on the manifest (Blender's tag list)
    python build.py build [--platform linux-x64 ...] [--torch cpu|cuda] [--out dist] [--offline]

``build`` stages ``prn_blender/*`` (package contents at the zip root, no ``__pycache__``), ``blender_manifest.toml``
and ``wheels/`` into ``build/stage-<platform>-<torch>/``, fills ``wheels/`` with every runtime dependency
(``pip download --only-binary=:all: --no-deps`` for the target platform and CPython 3.11; numpy and bpy are not
bundled: Blender ships them), rewrites ``wheels = [...]`` and ``platforms`` in the STAGED manifest, then runs
Blender's ``blender_ext.py build --split-platforms`` -> ``dist/prn_blender-<version>-<platform>.zip`` (Blender's naming:
``linux-x64`` is written ``linux_x64``). Downloads are cached in ``build/wheel-cache/<platform>/`` so rebuilds need no
network. Blender's CLI is pure Python inside the bpy wheel; it is imported from there, no Blender binary is needed.

Torch variants: ``cpu`` = the local ``torch==2.13.0+cpu`` wheel for linux-x64 (pip's find-links, /opt/wheels here);
``cuda`` = the package registry's default ``torch==2.13.0`` manylinux wheel plus its ``nvidia-*``/``triton``
dependencies (read from the wheel's own metadata; several GB).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PKG_DIR = ROOT / "prn_blender"
MANIFEST = ROOT / "blender_manifest.toml"
CACHE = ROOT / "build" / "wheel-cache"
PY_VERSION = "3.11"

# Runtime dependencies bundled as wheels. torch and its runtime requirements (pip show torch: filelock, fsspec,
# jinja2, networkx, setuptools, sympy, typing-extensions; sympy -> mpmath, jinja2 -> markupsafe) + our own.
# Versions default to constraints.txt (the pinned dev environment); numpy and bpy are provided by Blender.
TORCH_VERSION = "2.13.0"
RUNTIME = ["torch", "filelock", "typing-extensions", "setuptools", "sympy", "mpmath", "networkx", "jinja2",
           "markupsafe", "fsspec", "opencv-python-headless", "safetensors", "yuface"]
FALLBACK_PINS = {"opencv-python-headless": "4.11.0.86", "yuface": "2023.5.1", "setuptools": "84.2.1"}
NOT_BUNDLED = {"numpy", "bpy"}

# Blender platform -> pip --platform tags (most specific first; pure "any" wheels are always accepted)
PIP_PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                  "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
                  "linux_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64"],
    "macos-x64": ["macosx_10_15_x86_64", "macosx_10_9_x86_64"],
}
# marker environment of the target (for evaluating torch's Requires-Dist in --torch cuda)
MARKER_ENV = {
    "linux-x64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                  "os_name": "posix"},
    "windows-x64": {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64",
                    "os_name": "nt"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64",
                    "os_name": "posix"},
    "macos-x64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64",
                  "os_name": "posix"},
}


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- Blender's tool

def blender_scripts_dir() -> Path:
    """``site-packages/bpy/<ver>/scripts`` of the installed bpy wheel (found without importing bpy)."""
    import importlib.util
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the bpy module is not installed in this Python (pip install bpy==4.5.15)")
    base = Path(list(spec.submodule_search_locations)[0])
    cands = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not cands:
        raise BuildError(f"Blender's extension CLI (bl_pkg/cli/blender_ext.py) not found under {base}")
    return cands[-1].parents[3]


def blender_ext_cli(args: list[str]) -> int:
    """Run Blender's extension CLI (pure Python) in a child process of this interpreter."""
    cli = blender_scripts_dir() / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    log("blender_ext " + " ".join(args))
    return subprocess.call([sys.executable, str(cli), *args])


def valid_tags_json(dest: Path) -> Path:
    """Blender's own tag list (``_bpy_internal/extensions/tags.py``) as the JSON ``--valid-tags`` expects:
    ``{"add-on": [...], "theme": [...]}``."""
    src = blender_scripts_dir() / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    ns: dict = {}
    exec(compile(src.read_text(encoding="utf-8"), str(src), "exec"), ns)
    data = {"add-on": sorted(ns["addons"]), "theme": sorted(ns["themes"])}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return dest


# ----------------------------------------------------------------------------------------------- manifest

def read_manifest(path: Path = MANIFEST) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _toml_list(values: list[str], indent: str = "  ") -> str:
    if not values:
        return "[]"
    return "[\n" + "".join(f'{indent}{json.dumps(v)},\n' for v in values) + "]"


def rewrite_manifest(text: str, key: str, values: list[str]) -> str:
    """Replace the top-level ``key = [...]`` array (possibly multi-line) in manifest text; append if absent."""
    pat = re.compile(rf"^{re.escape(key)}[ \t]*=[ \t]*\[.*?\][ \t]*$", re.M | re.S)
    new = f"{key} = {_toml_list(values)}"
    if pat.search(text):
        return pat.sub(lambda m: new, text, count=1)
    # insert before the first table header so it stays top-level
    m = re.search(r"^\[", text, re.M)
    return (text[:m.start()] + new + "\n\n" + text[m.start():]) if m else text.rstrip() + "\n" + new + "\n"


# ----------------------------------------------------------------------------------------------- wheels

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pins() -> dict[str, str]:
    """name -> version from constraints.txt (the pinned dev environment), plus fallbacks."""
    out = {_norm(k): v for k, v in FALLBACK_PINS.items()}
    cons = ROOT / "constraints.txt"
    if cons.exists():
        for line in cons.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                n, v = line.split("==", 1)
                out[_norm(n)] = v.strip()
    return out


def requirements(torch_variant: str, platform: str) -> list[tuple[str, str]]:
    """[(name, exact version)] to download for a platform. The CPU torch on linux is the local ``+cpu`` build."""
    p = pins()
    reqs = []
    for name in RUNTIME:
        if name == "torch":
            v = TORCH_VERSION + ("+cpu" if (torch_variant == "cpu" and platform.startswith("linux")) else "")
        else:
            v = p.get(_norm(name))
            if v is None:
                raise BuildError(f"no pinned version for {name}; add it to constraints.txt")
        reqs.append((name, v))
    return reqs


def _wheel_name_version(fname: str) -> tuple[str, str]:
    parts = fname[:-4].split("-")
    return _norm(parts[0]), parts[1]


def cached_wheel(cache: Path, name: str, version: str) -> Path | None:
    if not cache.is_dir():
        return None
    for f in sorted(cache.glob("*.whl")):
        n, v = _wheel_name_version(f.name)
        if n == _norm(name) and v == version:
            return f
    return None


def _pip_env(registry_default: bool) -> dict:
    env = dict(os.environ)
    if registry_default:
        # only the registry's default index: no local find-links (which would offer torch 2.13.0+cpu) or
        # extra indexes from pip config files
        env.pop("PIP_FIND_LINKS", None)
        env.pop("PIP_EXTRA_INDEX_URL", None)
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_download(name: str, version: str, platform: str, cache: Path, offline: bool,
                 registry_default: bool = False) -> Path:
    """One wheel (exact version, no deps) for the target platform into the cache; returns its path."""
    if (hit := cached_wheel(cache, name, version)) is not None:
        return hit
    if offline:
        raise BuildError(f"{name}=={version} for {platform} is not in {cache} and --offline was given")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache),
           "--python-version", PY_VERSION, "--implementation", "cp", "--abi", "cp311", "--abi", "abi3",
           "--abi", "none"]
    for tag in PIP_PLATFORMS[platform]:
        cmd += ["--platform", tag]
    cmd.append(f"{name}=={version}")
    log(f"downloading {name}=={version} ({platform})")
    r = subprocess.run(cmd, env=_pip_env(registry_default), capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"pip download {name}=={version} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    hit = cached_wheel(cache, name, version)
    if hit is None:
        raise BuildError(f"pip downloaded {name}=={version} but no matching wheel appeared in {cache}:\n{r.stdout}")
    return hit


def wheel_requires(whl: Path, platform: str, extras: tuple = ()) -> list[tuple[str, str]]:
    """Requires-Dist of a wheel evaluated for the target (CPython 3.11 on ``platform``): [(name, specifier)]."""
    from packaging.requirements import Requirement
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    env = dict(MARKER_ENV[platform], python_version=PY_VERSION, python_full_version=PY_VERSION + ".0",
               implementation_name="cpython", platform_python_implementation="CPython", extra="")
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        out.append((req.name, str(req.specifier)))
    return out


def _exact(spec: str) -> str | None:
    m = re.fullmatch(r"==\s*([^,*]+)", spec.strip())
    return m.group(1).strip() if m else None


def collect_wheels(platform: str, torch_variant: str, offline: bool = False) -> list[Path]:
    """Every runtime wheel for ``platform`` (downloaded once into build/wheel-cache/<platform>/)."""
    if platform not in PIP_PLATFORMS:
        raise BuildError(f"unsupported platform {platform!r}; one of {sorted(PIP_PLATFORMS)}")
    cache = CACHE / platform
    wheels = []
    for name, version in requirements(torch_variant, platform):
        cuda_torch = name == "torch" and torch_variant == "cuda"
        whl = pip_download(name, version, platform, cache, offline, registry_default=cuda_torch)
        wheels.append(whl)
        if cuda_torch:
            # the registry's manylinux torch pulls nvidia-* (and triton) wheels pinned in its metadata
            have = {_norm(n) for n in RUNTIME}
            for dep, spec in wheel_requires(whl, platform):
                if _norm(dep) in have or _norm(dep) in NOT_BUNDLED:
                    continue
                ver = _exact(spec)
                if ver is None:
                    raise BuildError(f"torch requires {dep}{spec}: not an exact pin; add it to RUNTIME/pins")
                wheels.append(pip_download(dep, ver, platform, cache, offline, registry_default=True))
    for w in wheels:
        if _wheel_name_version(w.name)[0] in NOT_BUNDLED:
            raise BuildError(f"{w.name} must not be bundled (Blender provides it)")
    return wheels


# ----------------------------------------------------------------------------------------------- staging

def stage(dest: Path, wheels: list[Path] | None, platform: str | None) -> Path:
    """Copy the package contents + manifest (+ wheels) into ``dest``; returns the staged manifest path."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PKG_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    text = MANIFEST.read_text(encoding="utf-8")
    if wheels is not None:
        (dest / "wheels").mkdir()
        for w in wheels:
            shutil.copy2(w, dest / "wheels" / w.name)
        text = rewrite_manifest(text, "wheels", [f"./wheels/{w.name}" for w in wheels])
    if platform is not None:
        text = rewrite_manifest(text, "platforms", [platform])
    out = dest / "blender_manifest.toml"
    out.write_text(text, encoding="utf-8")
    return out


def cmd_validate(args) -> int:
    tags = valid_tags_json(ROOT / "build" / "blender_valid_tags.json")
    manifest = read_manifest()
    if manifest.get("wheels"):
        listed = {Path(w).name for w in manifest["wheels"]}
        names = {_wheel_name_version(w)[0] for w in listed}
        missing = {_norm(n) for n in RUNTIME} - names
        if missing:
            log(f"manifest wheels list lacks: {sorted(missing)}")
            return 1
        if names & NOT_BUNDLED:
            log(f"manifest lists wheels Blender provides: {sorted(names & NOT_BUNDLED)}")
            return 1
    # Blender's validator needs the add-on's __init__.py next to the manifest: validate a staged copy
    dest = ROOT / "build" / "stage-validate"
    stage(dest, None, None)
    rc = blender_ext_cli(["validate", str(dest), "--valid-tags", str(tags)])
    log("validate: " + ("OK" if rc == 0 else f"FAILED (rc {rc})"))
    return rc


def cmd_build(args) -> int:
    tags = valid_tags_json(ROOT / "build" / "blender_valid_tags.json")
    version = read_manifest()["version"]
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rc = 0
    for platform in args.platform or ["linux-x64"]:
        t0 = time.perf_counter()
        wheels = collect_wheels(platform, args.torch, offline=args.offline)
        t1 = time.perf_counter()
        dest = ROOT / "build" / f"stage-{platform}-{args.torch}"
        stage(dest, wheels, platform)
        zip_name = f"{read_manifest()['id']}-{version}-{platform.replace('-', '_')}.zip"
        r = blender_ext_cli(["build", "--source-dir", str(dest), "--output-dir", str(out_dir),
                             "--valid-tags", str(tags), "--split-platforms"])
        zpath = out_dir / zip_name
        if r != 0 or not zpath.exists():
            log(f"build FAILED for {platform} (rc {r})")
            rc = rc or (r or 1)
            continue
        # check: Blender's platform filter kept every wheel, and the archive validates
        with zipfile.ZipFile(zpath) as z:
            inside = {Path(n).name for n in z.namelist() if n.startswith("wheels/") and n.endswith(".whl")}
            has_init = "__init__.py" in z.namelist()
        dropped = sorted({w.name for w in wheels} - inside)
        if dropped or not has_init:
            log(f"archive problem: dropped wheels {dropped}, __init__.py at root: {has_init}")
            rc = rc or 1
            continue
        r = blender_ext_cli(["validate", str(zpath), "--valid-tags", str(tags)])
        rc = rc or r
        t2 = time.perf_counter()
        log(f"{zpath} {zpath.stat().st_size / 2**20:.1f} MiB, {len(wheels)} wheels "
            f"(wheels {t1 - t0:.1f} s, stage+build+validate {t2 - t1:.1f} s)")
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="build", choices=["build", "validate"])
    ap.add_argument("--platform", action="append", choices=sorted(PIP_PLATFORMS),
                    help="Blender platform (repeatable); default linux-x64")
    ap.add_argument("--torch", choices=["cpu", "cuda"], default="cpu",
                    help="cpu: local torch+cpu wheel (linux); cuda: the registry's default torch + nvidia-* wheels")
    ap.add_argument("--out", default=str(ROOT / "dist"), help="output folder for the .zip files")
    ap.add_argument("--offline", action="store_true", help="use build/wheel-cache only, never the network")
    args = ap.parse_args(argv)
    try:
        return cmd_validate(args) if args.command == "validate" else cmd_build(args)
    except BuildError as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
