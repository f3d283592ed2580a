"""Scale-out (jax_whisper.parallel): a training step sharded over 4 CPU devices, data-parallel and data x FSDP,
equals the single-device step; two processes on localhost (jax.distributed with a local coordinator, gloo) train
together to identical parameters, equal to one process's on the same mesh.

The device count and the distributed runtime are fixed when a process first touches jax, so the sharded runs are
subprocesses, and this file is also their worker (``python tests/test_sharding.py steps|train ...``).
``SHARDING_SEED`` (an int, or ``random``) picks another model and data seed; failures name the seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "n_audio_state=64,n_text_state=64,n_audio_head=2,n_text_head=2,n_audio_layer=1,n_text_layer=1"
CORPUS = dict(n_train=40, n_val=8, n_test=8)
STEPS = 3
# Relative bounds after STEPS AdamW steps: the loss and each parameter tensor's L2 error 1e-5; max-abs per tensor
# 2e-4, because the layouts sum in different orders (float32 rounding, ~1e-7 of the gradient) and Adam's early
# updates, lr * g / (|g| + eps), magnify that in components whose gradient is near eps: the token embedding's rows
# for tokens not in the batch get gradients ~1e-6 (measured 2.9e-5 to 6.1e-5 there over seeds and runs; one plain
# SGD step: 5.6e-7). Token loss only: CTC's gradient carries ~1e-5 of float32 noise by itself
# (tests/test_train.py ACCUM_NOISE).
LOSS, L2, MAX_ABS = 1e-5, 1e-5, 2e-4


def _seed() -> int:
    s = os.environ.get("SHARDING_SEED", "0")
    return int(np.random.default_rng().integers(2**31)) if s == "random" else int(s)


def _config(cache_dir, out, **kw):
    from jax_whisper.config import TrainConfig

    # dropout on: its masks must not depend on the layout
    base = dict(model=TINY, cache_dir=str(cache_dir), **CORPUS, batch_size=8, buckets=1, warmup_steps=2, max_lr=5e-3,
                dropout=0.1, ctc_only_steps=0, label_smoothing=0.1, eval_batch_size=8, output_dir=str(out),
                progress=False, tensorboard=False)
    return TrainConfig(**{**base, **kw})


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max-abs, L2) of a - b relative to b's; 0 when both are all zero."""
    d = (a - b).astype(np.float64)
    return (float(np.abs(d).max() / max(np.abs(b).max(), 1e-30)),
            float(np.linalg.norm(d) / max(np.linalg.norm(b.astype(np.float64)), 1e-30)))


def _worst(errors: dict[str, tuple[float, float]]) -> tuple[tuple[str, float], tuple[str, float]]:
    """The largest max-abs and the largest L2 error of :func:`_rel` over tensors, each with its tensor's name."""
    return tuple(max(((k, e[i]) for k, e in errors.items()), key=lambda kv: kv[1]) for i in (0, 1))


def _flat(state) -> dict:
    """name -> array of an nnx state; RNG keys as their raw words."""
    import jax
    from flax import nnx

    out = {}
    for k, v in nnx.to_flat_state(state):
        x = v.get_value()
        key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        out["/".join(map(str, k))] = jax.random.key_data(x) if key else x
    return out


def _numpy(state) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in _flat(state).items()}


# ==========================================================================================================
# workers (subprocesses)
# ==========================================================================================================


def _steps_worker(cache_dir: str, out: str, seed: int) -> dict:
    """STEPS steps on one device (the plain path, no mesh) and with FlaxBackend on the 4-device mesh, data=4 and
    data=2 x fsdp=2, from the same initial state and batches (2 micro-batches, dropout, label smoothing); then a
    checkpoint round trip of the FSDP state."""
    import jax
    from flax import nnx

    from jax_whisper import train as T
    from jax_whisper.datasets import open_dataset
    from jax_whisper.pipeline import Plan, quantile_buckets
    from jax_whisper.tokenizer import get_tokenizer

    assert jax.device_count() == 4, jax.devices()
    tc = _config(cache_dir, out, seed=seed, ctc_weight=0.0, grad_accum=2)
    cfg = tc.model_config()
    src = open_dataset("synthetic", "train", cache_dir=cache_dir, **CORPUS)
    plan = Plan(src, get_tokenizer(cfg), n_text_ctx=cfg.n_text_ctx, batch_size=tc.batch_size, seed=seed,
                buckets=quantile_buckets(src.durations(), cfg.n_frames, 1))
    batches = [plan.collate(*plan.step(s)) for s in range(STEPS)]
    total = 10

    tm = T.init_model(tc, cfg)
    opt = T.optimizer_for(tm, tc, total)  # as FlaxBackend.setup
    ref_loss = [float(T.train_step(tm, opt, T.device_batch(b), n_mels=cfg.n_mels, grad_accum=tc.grad_accum,
                                   label_smoothing=tc.label_smoothing, ctc_weight=tc.ctc_weight_at(s + 1))["loss"])
                for s, b in enumerate(batches)]
    ref = _numpy(nnx.state(tm, nnx.Param))

    report = {}
    for fsdp in (1, 2):
        run_dir = Path(out) / f"fsdp{fsdp}"
        be = T.FlaxBackend()
        be.setup(dataclasses.replace(tc, fsdp=fsdp), cfg, total, run_dir)
        layout = {k: v.sharding for k, v in _state(be).items()}
        loss = [be.step(b, s + 1)["loss"] for s, b in enumerate(batches)]
        got = _numpy(nnx.state(be.tm, nnx.Param))
        arrays = _state(be)
        run = {
            "loss": loss, "ref_loss": ref_loss, "errors": {k: _rel(got[k], ref[k]) for k in ref},
            # the step hands the state back laid out as it came in
            "moved": [k for k, v in arrays.items() if not v.sharding.is_equivalent_to(layout[k], v.ndim)],
            # arrays a device holds only part of, and non-scalars it holds whole
            "split": [k for k, v in arrays.items() if v.addressable_shards[0].data.shape != v.shape],
            "whole": [k for k, v in arrays.items() if v.ndim and v.addressable_shards[0].data.shape == v.shape],
            "params": sorted(ref),
        }
        if fsdp > 1:  # a checkpoint of the sharded state, restored into a fresh backend
            be.save(STEPS, {"step": STEPS})
            saved = {k: np.asarray(v) for k, v in arrays.items()}
            be.close()
            be = T.FlaxBackend()
            be.setup(dataclasses.replace(tc, fsdp=fsdp), cfg, total, run_dir)
            run["fresh_differs"] = [k for k, v in _state(be).items() if not np.array_equal(np.asarray(v), saved[k])]
            be.restore(STEPS)
            back = _state(be)
            run["restored_differs"] = [k for k, v in back.items() if not np.array_equal(np.asarray(v), saved[k])]
            run["restored_moved"] = [k for k, v in back.items() if not v.sharding.is_equivalent_to(layout[k],
                                                                                                      v.ndim)]
        be.close()
        report[f"fsdp{fsdp}"] = run
    return report


def _state(be) -> dict:
    """Everything a backend's step updates: model (parameters, RNG) and optimizer state."""
    from flax import nnx

    return {**_flat(nnx.state(be.tm)), **{f"opt/{k}": v for k, v in _flat(nnx.state(be.optimizer)).items()}}


def _train_worker(dump: str, argv: list[str]) -> int:
    """``scripts/train_flax.py argv``; before the backend closes, the Whisper parameters this process holds are
    written to ``dump`` (npz; a tensor split over this process's devices is put together from its shards)."""
    import importlib.util

    from flax import nnx

    from jax_whisper import train as T

    close = T.FlaxBackend.close

    def dump_then_close(self):
        arrays = {}
        for k, v in _flat(nnx.state(self.tm.whisper, nnx.Param)).items():
            full = np.zeros(v.shape, v.dtype)
            seen = np.zeros(v.shape, bool)
            for s in v.addressable_shards:
                full[s.index], seen[s.index] = np.asarray(s.data), True
            assert seen.all(), f"{k}: this process does not hold all of it"
            arrays[k] = full
        np.savez(dump, **arrays)
        close(self)

    T.FlaxBackend.close = dump_then_close
    spec = importlib.util.spec_from_file_location("train_flax", ROOT / "scripts" / "train_flax.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli.main(argv)


# ==========================================================================================================
# tests
# ==========================================================================================================


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from jax_whisper.datasets import open_dataset

    d = tmp_path_factory.mktemp("corpus")
    for split in ("train", "validation", "test"):
        open_dataset("synthetic", split, cache_dir=d, **CORPUS)
    return d


def _env(devices: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def test_sharded_step_equals_single_device(cache_dir, tmp_path):
    seed = _seed()
    r = subprocess.run([sys.executable, __file__, "steps", str(cache_dir), str(tmp_path), str(seed)], env=_env(4),
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"seed {seed}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    report = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("REPORT "))[len("REPORT "):])
    for name, run in report.items():
        loss_err = max(abs(a - b) / abs(b) for a, b in zip(run["loss"], run["ref_loss"], strict=True))
        worst_max, worst_l2 = _worst(run["errors"])
        print(f"{name}: loss {loss_err:.1e}; parameters max-abs {worst_max}, L2 {worst_l2}")
        assert loss_err <= LOSS, f"seed {seed}, {name}: losses {run['loss']} vs {run['ref_loss']}"
        assert worst_l2[1] <= L2 and worst_max[1] <= MAX_ABS, f"seed {seed}, {name}: {worst_l2}, {worst_max}"
        assert not run["moved"], f"{name}: the step changed the layout of {run['moved'][:5]}"
    dp, fsdp = report["fsdp1"], report["fsdp2"]
    assert not dp["split"]  # data-parallel: every device holds everything
    # FSDP: every tensor of this model has an even axis, so each is split, and both Adam moments of each parameter;
    # only the RNG keys' words stay whole
    assert all("rngs" in k for k in fsdp["whole"]), fsdp["whole"]
    for p in fsdp["params"]:
        assert {p, f"opt/opt_state/1/0/mu/{p}", f"opt/opt_state/1/0/nu/{p}"} <= set(fsdp["split"]), p
    assert fsdp["fresh_differs"], "the fresh backend already held the trained state: the restore would prove nothing"
    assert not fsdp["restored_differs"], f"restored state differs: {fsdp['restored_differs'][:5]}"
    assert not fsdp["restored_moved"], f"restored with another layout: {fsdp['restored_moved'][:5]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_available() -> bool:
    from jax._src.lib import _jax

    return hasattr(_jax, "make_gloo_tcp_collectives")


@pytest.mark.skipif(not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_train_like_one(cache_dir, tmp_path):
    """Two processes x 2 CPU devices (mesh data=2 x fsdp=2, each process feeding half of every batch) run the CLI
    for 4 steps (a CTC-only step, then the token loss) with two validations and the test; one process with 4
    devices runs the same at the same time."""
    from flax import nnx

    from jax_whisper.convert import load_checkpoint, training_checkpoint

    seed = _seed()
    flags = ["--model", TINY, "--cache-dir", str(cache_dir), "--n-train", "40", "--n-val", "8", "--n-test", "8",
             "--batch-size", "8", "--buckets", "1", "--max-steps", "4", "--warmup-steps", "2", "--max-lr", "5e-3",
             "--dropout", "0.1", "--ctc-only-steps", "1", "--ctc-weight", "0", "--label-smoothing", "0.1",
             "--eval-every", "2", "--eval-batch-size", "8", "--log-every", "1", "--progress", "false",
             "--tensorboard", "false", "--seed", str(seed), "--fsdp", "2"]
    coordinator = f"127.0.0.1:{_free_port()}"
    runs = {"multi": [["--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)] for i in (0, 1)],
            "single": [[]]}
    procs = {}
    for name, extra in runs.items():
        for i, args in enumerate(extra):
            procs[name, i] = subprocess.Popen(
                [sys.executable, __file__, "train", str(tmp_path / f"{name}{i}.npz"), *flags, *args,
                 "--output-dir", str(tmp_path / name)],
                env=_env(2 if name == "multi" else 4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        logs = {k: p.communicate(timeout=1200)[0] for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for k, p in procs.items():
        assert p.returncode == 0, f"seed {seed}, {k}:\n{logs[k][-5000:]}"
    assert "x4 in 2 processes, mesh data 2 x fsdp 2" in logs["multi", 0]
    assert "x4 in 1 process, mesh data 2 x fsdp 2" in logs["single", 0]

    def params(checkpoint) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in _flat(nnx.state(load_checkpoint(checkpoint)[1], nnx.Param)).items()}

    # both processes end holding the same parameters (those of the best validation step, restored for the test),
    # and the checkpoint they wrote together is exactly that
    p0, p1 = (dict(np.load(tmp_path / f"multi{i}.npz")) for i in (0, 1))
    differ = [k for k in p0 if not np.array_equal(p0[k], p1[k])]
    assert p0.keys() == p1.keys() and not differ, f"seed {seed}: the processes disagree on {differ[:5]}"
    saved = params(training_checkpoint(tmp_path / "multi"))
    assert saved.keys() == p0.keys() and all(np.array_equal(saved[k], p0[k]) for k in p0)

    multi, single = (params(tmp_path / n / "checkpoints" / "4") for n in runs)
    worst_max, worst_l2 = _worst({k: _rel(multi[k], single[k]) for k in single})
    records = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
               for n in runs}
    losses = {n: [r["loss"] for r in rs if r["split"] == "train"] for n, rs in records.items()}
    print(f"2 processes vs 1: losses {losses['multi']} vs {losses['single']}; parameters max-abs {worst_max}, "
          f"L2 {worst_l2}")
    assert len(losses["multi"]) == 4, records["multi"]  # process 0 alone writes the run's metrics
    assert np.allclose(losses["multi"], losses["single"], rtol=LOSS, atol=0), f"seed {seed}: {losses}"
    assert worst_l2[1] <= L2 and worst_max[1] <= MAX_ABS, f"seed {seed}: {worst_l2}, {worst_max}"
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in runs}
    for key in ("test_utterances", "test_wer", "val_wer", "test_ctc_wer", "best_step"):
        assert results["multi"][key] == results["single"][key], (key, results)
    assert results["multi"]["test_utterances"] == CORPUS["n_test"]  # each utterance counted once
    assert [h["val_wer"] for h in results["multi"]["history"]] == [h["val_wer"] for h in results["single"]["history"]]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "steps":
        print("REPORT " + json.dumps(_steps_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        sys.exit(_train_worker(sys.argv[2], sys.argv[3:]))
