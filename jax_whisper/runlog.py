"""Run bookkeeping shared by the Flax and PyTorch trainers (no jax, no torch): metrics to JSONL and TensorBoard,
atomic JSON results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsLog:
    """Metrics to ``metrics.jsonl`` (one object per line) and, optionally, TensorBoard; ``enabled=False`` writes
    nothing (the other processes of a multi-process run)."""

    def __init__(self, directory: Path, *, tensorboard: bool, resume_step: int | None, enabled: bool = True):
        self.path = directory / "metrics.jsonl"
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():  # drop what the interrupted run logged after its checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(directory / "tensorboard"))

    def write(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "time": time.time(), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
