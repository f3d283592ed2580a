"""Run bookkeeping shared by the Flax and PyTorch trainers (no jax, no torch): the run directory's lock and its
guard against mixing two runs, metrics to JSONL and TensorBoard, atomic JSON results, and the picture of a run's
curves (``curves.png``)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

RUN_FILES = ("checkpoints", "best", "metrics.jsonl", "results.json", "config.json", "tensorboard", "curves.png")


class RunDirectoryError(RuntimeError):
    """The output directory cannot be used as asked (in use by another process, or holding another run)."""


def claim_run_directory(directory: Path, *, resume: bool, overwrite: bool):
    """Lock ``directory`` for this process and check that starting here loses nothing; returns the lock (an open
    file: keep it until the run ends; the lock goes with the process, however it ends).

    A directory holding an earlier run is refused unless ``resume`` (continue it) or ``overwrite`` (its run files,
    ``RUN_FILES``, are deleted first; other files are left alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = open(directory / ".lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RunDirectoryError(f"{directory} is in use by another training run (process {holder}, lock "
                                f"{directory / '.lock'}); wait for it or choose another --output-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    found = [name for name in RUN_FILES if (directory / name).exists()]
    if found and not resume:
        if not overwrite:
            lock.close()
            raise RunDirectoryError(f"{directory} holds an earlier run ({', '.join(found)}): pass --resume to "
                                    f"continue it, --overwrite to replace it, or choose another --output-dir")
        for name in found:
            p = directory / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return lock


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


def plot_curves(directory: Path, history: list[dict], title: str = "") -> Path:
    """``<directory>/curves.png``: validation WER (and the CTC head's, and each scoring group's) and the losses
    against wall-clock minutes and against steps, from ``metrics.jsonl`` and the validation ``history``.
    Written atomically, so a viewer never sees half a picture."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot as plt

    train = []
    path = directory / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if r.get("split") == "train" and "wall_minutes" in r:
                train.append(r)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    for col, x in enumerate(("wall_minutes", "step")):
        ax = axes[0, col]
        for key, label in (("val_wer", "validation WER"), ("val_wer_heldout_voices", "held-out voices"),
                           ("val_wer_train_voices", "training voices"), ("val_ctc_wer", "CTC head alone")):
            pts = [(h[x], h[key]) for h in history if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label, lw=2 if key == "val_wer" else 1)
        ax.set_ylim(0, min(150, max([h.get("val_wer", 0) for h in history] + [10]) * 1.1))
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        if train:
            k = max(1, len(train) // 200)  # a running mean keeps the curve readable
            xs = [r[x] for r in train][k - 1:]
            loss = [r["loss"] for r in train]
            smooth = [sum(loss[i - k + 1:i + 1]) / k for i in range(k - 1, len(loss))]
            ax.plot(xs, smooth, lw=1, label="training loss")
        pts = [(h[x], h["val_loss"]) for h in history if "val_loss" in h]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label="validation loss (teacher-forced)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("wall-clock minutes" if x == "wall_minutes" else "step")
    axes[0, 0].set_ylabel("WER %")
    axes[1, 0].set_ylabel("loss")
    axes[0, 1].legend(fontsize=8)
    axes[1, 1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = directory / "curves.png"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
