"""Evaluate prn_blender headless: ``python eval.py ARGS`` or ``blender -b --python-exit-code 1 -P eval.py -- ARGS``
(``--python-exit-code`` makes Blender return non-zero when the script raises). See ``python eval.py --help``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prn_blender.cli_util import exit_now, script_argv  # noqa: E402

if __name__ == "__main__":
    from prn_blender.evaluate.run import main
    try:
        code = main(script_argv())
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (print(e.code, file=sys.stderr) or 2)
    except Exception as e:  # noqa: BLE001 - report one line, exit non-zero under python and blender alike
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    exit_now(code)
