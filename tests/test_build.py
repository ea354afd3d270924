"""Extension packaging: Blender's validator accepts the manifest; the linux-x64 zip builds, installs in a sandboxed
Blender (module mode) and its operator runs from the installed copy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import importlib.util  # noqa: E402

# build.py at the repo root, loaded by path (a PyPI package named "build" must not shadow it)
_spec = importlib.util.spec_from_file_location("prn_build", REPO / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules["prn_build"] = build
_spec.loader.exec_module(build)


def test_validate_passes():
    r = subprocess.run([sys.executable, str(REPO / "build.py"), "validate"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success parsing TOML" in r.stdout


def test_manifest_rules():
    m = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert m["schema_version"] == "1.0.0" and m["id"] == "prn_blender" and m["type"] == "add-on"
    assert len(m["tagline"]) <= 64 and m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"] and m["platforms"] == ["linux-x64"]
    tags = json.loads(build.valid_tags_json(Path(tempfile.mkdtemp()) / "t.json").read_text())["add-on"]
    assert set(m["tags"]) <= set(tags)
    names = {build._wheel_name_version(Path(w).name)[0] for w in m["wheels"]}
    assert names == {build._norm(n) for n in build.RUNTIME}          # every runtime dependency, no numpy/bpy
    assert m["permissions"]["files"]


def test_rewrite_manifest_keeps_tables():
    text = 'id = "x"\nwheels = [\n  "a",\n]\n\n[permissions]\nfiles = "y"\n'
    out = tomllib.loads(build.rewrite_manifest(text, "wheels", ["./wheels/b.whl"]))
    assert out["wheels"] == ["./wheels/b.whl"] and out["permissions"]["files"] == "y"
    out = tomllib.loads(build.rewrite_manifest('id = "x"\n\n[permissions]\nfiles = "y"\n', "platforms", ["p"]))
    assert out["platforms"] == ["p"] and out["permissions"] == {"files": "y"}


def test_requirements_plan():
    cpu = dict(build.requirements("cpu", "linux-x64"))
    assert cpu["torch"] == "2.13.0+cpu" and cpu["opencv-python-headless"] == "4.11.0.86"
    assert cpu["yuface"] == "2023.5.1" and "numpy" not in cpu and "bpy" not in cpu
    assert dict(build.requirements("cuda", "linux-x64"))["torch"] == "2.13.0"   # the registry's default wheel
    # cuda torch comes from the registry's default index only (no local find-links offering 2.13.0+cpu)
    env = build._pip_env(registry_default=True)
    assert "PIP_FIND_LINKS" not in env and env["PIP_CONFIG_FILE"] == os.devnull


_INSTALL_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    sandbox, zip_path, image, src = sys.argv[1:5]
    os.environ["BLENDER_USER_RESOURCES"] = sandbox
    import bpy
    out = {}
    try:
        r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                     enable_on_install=True)
        out["install"] = sorted(r)
        out["addons"] = sorted(a.module for a in bpy.context.preferences.addons)
        mod = sys.modules.get("bl_ext.user_default.prn_blender")
        out["module_file"] = getattr(mod, "__file__", None)
        op_cls = bpy.types.PRN_OT_reconstruct_image
        out["operator_module"] = sys.modules[op_cls.__module__].__file__
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        out["run"] = sorted(bpy.ops.prn.reconstruct_image(filepath=image))
        out["meshes"] = [m.name for m in bpy.data.meshes]
        out["n_verts"] = max((len(m.vertices) for m in bpy.data.meshes), default=0)
    except Exception as e:  # report, do not hang
        import traceback
        out["error"] = traceback.format_exc()
    print("RESULT " + json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)
""")


@pytest.mark.slow
@pytest.mark.shared
def test_build_install_and_run(tmp_path, shared):
    image = shared / "prnet" / "demo-images" / "1.jpg"
    assert image.exists()
    r = subprocess.run([sys.executable, str(REPO / "build.py"), "build", "--platform", "linux-x64",
                        "--out", str(tmp_path / "dist")], capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    version = tomllib.loads((REPO / "blender_manifest.toml").read_text())["version"]
    zip_path = tmp_path / "dist" / f"prn_blender-{version}-linux_x64.zip"
    assert zip_path.exists(), list((tmp_path / "dist").iterdir())

    sandbox = tmp_path / "blender_user"
    sandbox.mkdir()
    script = tmp_path / "install.py"
    script.write_text(_INSTALL_SCRIPT)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(sandbox), PYTHONPATH="")   # nothing from the source tree
    p = subprocess.run([sys.executable, str(script), str(sandbox), str(zip_path), str(image), str(REPO)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert "error" not in out, out["error"] + "\n" + p.stderr[-3000:]
    assert out["install"] == ["FINISHED"]
    assert "bl_ext.user_default.prn_blender" in out["addons"], out["addons"]
    sb = str(sandbox.resolve())
    for key in ("module_file", "operator_module"):
        path = str(Path(out[key]).resolve())
        assert path.startswith(sb) and not path.startswith(str(REPO)), (key, path)
    # the bundled wheels were installed into Blender's extension site-packages inside the sandbox (this venv
    # also has torch/cv2 earlier on sys.path, so which copy gets imported here is not the point)
    site = sandbox / "extensions" / ".local" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
        / "site-packages"
    for pkg in ("torch", "cv2", "safetensors", "yuface", "sympy", "jinja2", "markupsafe"):
        assert (site / pkg).is_dir(), (pkg, sorted(x.name for x in site.iterdir()) if site.is_dir() else site)
    assert not (site / "numpy").exists()
    assert out["run"] == ["FINISHED"], (out, p.stderr[-3000:])
    assert out["n_verts"] > 10000, out
