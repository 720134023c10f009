"""``python -m smilejax.inputs.ftag_h5 FILE_OR_GLOB ...``: scan files up front (``smilejax data check``)."""

import logging
import sys

import yaml

from . import check

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for arg in sys.argv[1:] or ["--help"]:
        if arg in ("-h", "--help"):
            print("usage: python -m smilejax.inputs.ftag_h5 FILE_OR_GLOB ... (default variables of GN2)")
            sys.exit(0)
        print(yaml.safe_dump(check(arg), sort_keys=False), end="")
