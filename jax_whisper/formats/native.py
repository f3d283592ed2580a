"""This project's own checkpoint formats: ``flax``, an orbax directory (``config.json`` + ``state/``), training
runs and their step directories (``flax-train``), and ``torch``, a ``.safetensors`` file under openai names with
the config in its metadata. Choosing a format and atomic replacement are :mod:`jax_whisper.convert`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from flax import nnx

from jax_whisper.config import WhisperConfig
from jax_whisper.formats.mapping import _concrete_rng_state
from jax_whisper.model import Buffer, Whisper


def training_checkpoint(path: str | os.PathLike) -> Path:
    """The step directory a ``flax-train`` path means: itself, or a run's best (else latest) checkpoint."""
    p = Path(path)
    if (p / "params").is_dir():
        return p
    for sub in ("best", "checkpoints"):
        # orbax renames a finished step into place: in-progress ones carry a tmp suffix and are not digits
        steps = sorted((int(d.name) for d in (p / sub).glob("*") if d.name.isdigit()), reverse=True)
        if steps:
            return p / sub / str(steps[0])
    raise FileNotFoundError(f"training run {str(p)!r} holds no finished checkpoint in best/ or checkpoints/")


def _save_flax(model: Whisper, cfg: WhisperConfig, path: Path) -> None:
    import orbax.checkpoint as ocp

    path.mkdir()
    (path / "config.json").write_text(cfg.to_json())
    weights = nnx.to_pure_dict(nnx.state(model, (nnx.Param, Buffer)))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((path / "state").absolute(), weights)


def check_data(path: Path, state: Path) -> None:
    """Every value of an OCDBT checkpoint (orbax's default layout) is present and whole, checked before orbax
    reads it: on missing or truncated data files orbax fails with one of its many concurrent reads and leaves the
    others to print tracebacks from TensorStore's threads. This reads the data once more (cheap next to
    orbax's read, which then comes from the page cache)."""
    if not (state / "manifest.ocdbt").is_file():
        return
    import tensorstore as ts

    try:
        kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state.absolute()}/"}).result()
        keys = kv.list().result()
    except ValueError as e:  # the database's own index files are gone or cut
        raise ValueError(f"checkpoint {str(path)!r}: {state.name}/ is missing or has corrupt data files "
                         f"({str(e).split(';')[0]})") from None
    for key in keys:
        name = key.decode(errors="replace").split("/")[0]
        try:
            r = kv.read(key).result()
        except ValueError as e:
            raise ValueError(f"checkpoint {str(path)!r}: the data of {name!r} is truncated or corrupt "
                             f"({str(e).split(';')[0]})") from None
        if r.state != "value" or not r.value:  # a value whose data file is gone reads as empty
            raise ValueError(f"checkpoint {str(path)!r}: the data of {name!r} is missing ({state.name}/ has lost "
                             f"data files)")


def _load_flax(path: Path, dtype, *, cfg: WhisperConfig | None = None, state: str = "state"
               ) -> tuple[WhisperConfig, Whisper]:
    import orbax.checkpoint as ocp

    cfg = cfg or WhisperConfig.from_json((path / "config.json").read_text())
    abstract = nnx.eval_shape(lambda: Whisper(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, weights, rest = nnx.split(abstract, (nnx.Param, Buffer), ...)
    # whole on one device, however the writer had it laid out (a sharded training run's checkpoint included)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device), nnx.to_pure_dict(weights))
    check_data(path, path / state)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore((path / state).absolute(), target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {str(path)!r} does not fit its config {cfg}: {e}") from e
    nnx.replace_by_pure_dict(weights, restored)
    model = nnx.merge(graphdef, weights, _concrete_rng_state(rest, 0))
    model.eval()
    return cfg, model
