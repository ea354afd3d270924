"""Write the small real-TensorFlow checkpoint used by tests/test_tf_bundle.py (run ONCE, in a throwaway env).

prn_blender never depends on TensorFlow; this script only produces a genuine tensor bundle so that the TF-free reader
(``prn_blender.core.tf_bundle``) is tested against bytes written by TensorFlow itself. The output is committed:

    tests/fixtures/tf_bundle/ckpt.index, ckpt.data-00000-of-00001   (written by tf.compat.v1.train.Saver, V2 format)
    tests/fixtures/tf_bundle/expected/<name with '/' -> '__'>.npy    (the values fed to the variables)
    tests/fixtures/tf_bundle/README.md                             (TF version, how it was made)

Usage (outside the repo's venv; TensorFlow is large):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python tools/make_tf_fixture.py [--out tests/fixtures/tf_bundle]
    rm -rf /tmp/tfenv
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def expected_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240607)
    return {
        "resfcn256/Conv/weights": rng.standard_normal((4, 4, 3, 2)).astype(np.float32),
        "resfcn256/Conv/BatchNorm/gamma": rng.uniform(0.5, 1.5, 2).astype(np.float32),
        "resfcn256/Conv/BatchNorm/moving_variance": rng.uniform(0.1, 2.0, 2).astype(np.float32),
        "resfcn256/Conv2d_transpose/weights": rng.standard_normal((4, 4, 5, 2)).astype(np.float32),
        "resfcn256/resBlock/shortcut/weights": rng.standard_normal((1, 1, 2, 4)).astype(np.float32),
        # enough entries (and a long shared key prefix) to span several restart points of the index block
        **{f"resfcn256/extra/layer_{i:02d}/bias": rng.standard_normal(3 + i).astype(np.float32) for i in range(20)},
        "global_step": np.array(123456789012, dtype=np.int64),
        "counts": rng.integers(-2**40, 2**40, size=(3, 5), dtype=np.int64),
        "scale": np.array(0.5, dtype=np.float32),
        "double_vec": rng.standard_normal(4).astype(np.float64),
        "int32_mat": rng.integers(-1000, 1000, size=(2, 3), dtype=np.int32),
        "flags": np.array([True, False, True]),
        "name": np.array([b"prn", b"", b"blender\x00bytes"], dtype=object),
    }


def fname(name: str) -> str:
    return name.replace("/", "__") + ".npy"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "tf_bundle")
    args = ap.parse_args(argv)
    import tensorflow as tf

    vals = expected_values()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "expected").mkdir(parents=True)
    g = tf.Graph()
    with g.as_default():
        var_list = {name: tf.compat.v1.Variable(v if v.dtype != object else v.astype(bytes), name=f"v{i}")
                    for i, (name, v) in enumerate(vals.items())}
        saver = tf.compat.v1.train.Saver(var_list=var_list, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(out / "ckpt"), write_meta_graph=False, write_state=False)
    for name, v in vals.items():
        np.save(out / "expected" / fname(name), v.astype(bytes) if v.dtype == object else v)
    (out / "README.md").write_text(
        "# TensorFlow tensor-bundle fixture\n\n"
        f"Written by `tools/make_tf_fixture.py` with TensorFlow {tf.__version__} "
        "(`tf.compat.v1.train.Saver`, V2 format) in a throwaway venv. `expected/*.npy` hold the values fed to the "
        "variables (tensor name with `/` replaced by `__`; the string tensor is stored as a fixed-width bytes array). "
        "Regenerate only if the reader's test needs new cases.\n")
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
