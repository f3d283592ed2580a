"""The README's main command path: a real (short) training run of the seed model on a small eSpeak corpus."""

from __future__ import annotations

import math

from jax_whisper.train import smoke_run


def test_smoke_run_trains(tmp_path):
    lines = []
    losses = smoke_run(steps=4, batch_size=4, n_utterances=12, warmup_steps=2, cache_dir=tmp_path, log=lines.append)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(50262)) < 1.0, losses  # fresh model: about uniform over the vocabulary
    assert losses[-1] < losses[0] - 0.3, losses  # steps 2-3 (lr 5e-4, 1e-3) already move it
    assert lines[0].startswith("corpus ") and "12 utterances" in lines[0]
