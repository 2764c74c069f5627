import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (golden.py) import as plain modules
if not torch.cuda.is_available():
    # Triton reads this when its kernels are defined; some torch modules import triton early.
    os.environ.setdefault("TRITON_INTERPRET", "1")
