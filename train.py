"""`python train.py CONFIG --out RUN_DIR ...` is `hnet train CONFIG --out RUN_DIR ...`."""

import sys

from hnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
