"""metrics.jsonl (and TensorBoard when installed) in the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def chunk_counts(batch: dict, routing) -> torch.Tensor:
    """[positions of the batch, chunks at stage 1, chunks at stage 2, ...] as float64."""
    chunks = [r.boundary_mask.sum() for r in routing]
    chunks = torch.stack(chunks).double().cpu().tolist() if chunks else []  # one device-to-host copy
    return torch.tensor([batch["input_ids"].numel()] + chunks, dtype=torch.float64)


def bytes_per_chunk(counts) -> list[float]:
    """counts = [bytes, chunks at stage 1, chunks at stage 2, ...] -> bytes per chunk at each stage."""
    return [float(counts[0] / max(float(c), 1.0)) for c in counts[1:]]


class MetricsWriter:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.start = time.time()
        self.file = open(Path(run_dir) / "metrics.jsonl", "a") if enabled else None
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = dict(record, time=round(time.time() - self.start, 3))
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
                elif isinstance(value, list):
                    for i, v in enumerate(value):
                        if isinstance(v, (int, float)):  # a per-stage figure (None: undefined there)
                            self.tensorboard.add_scalar(f"{key}/stage{i + 1}", v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
