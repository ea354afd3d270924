"""Helpers for scripts that run both as ``python script.py ARGS`` and ``blender -b -P script.py -- ARGS``."""
from __future__ import annotations

import os
import sys


def script_argv(argv: list[str] | None = None) -> list[str]:
    """The script's own arguments: those after ``--`` when run by Blender, else ``sys.argv[1:]``."""
    argv = sys.argv if argv is None else argv
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def exit_now(code: int) -> None:
    """Flush and exit with ``code``, without interpreter teardown where it is unsafe: bpy 4.5 can hang at exit when
    loaded, and a torchrun rank (WORLD_SIZE set) can abort in it after destroy_process_group ("terminate called
    without an active exception": gloo's threads meet the dying interpreter, pytorch/pytorch#179291; rare: once in
    CI and once in about 60 loops of the DDP test's commands here)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if "bpy" in sys.modules or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(int(code))
    sys.exit(int(code))
