"""Train the PRN model on synthetic faces: ``python train.py --out runs/x ...`` or
``blender -b -P train.py -- --out runs/x ...`` (see ``python train.py --help``)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prn_blender.cli_util import script_argv, exit_now  # noqa: E402

if __name__ == "__main__":
    from prn_blender.train.loop import main
    exit_now(main(script_argv()))
