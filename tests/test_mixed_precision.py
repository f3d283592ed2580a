"""bfloat16 compute with float32 parameters: ``model.mixed_dot`` multiplies in bf16 in the forward *and* the
backward pass (accumulating in float32), float32 stays plain ``lax.dot_general``, and a bf16 train step follows
the float32 one within bf16 rounding."""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jax_whisper import model as M
from jax_whisper import train as T
from jax_whisper.benchmark import train_batch
from jax_whisper.config import TrainConfig

BF16 = jnp.bfloat16
# (x shape, y shape, dimension numbers): a layer, attention's batched product, contractions out of order, and
# a batch axis that is not leading
CASES = [
    ((3, 5, 8), (8, 6), (((2,), (0,)), ((), ()))),
    ((2, 3, 5, 8), (2, 3, 8, 7), (((3,), (2,)), ((0, 1), (0, 1)))),
    ((4, 6, 5, 3), (5, 4, 9, 6), (((1, 2), (3, 0)), ((), ()))),
    ((7, 4, 6, 5), (5, 6, 7, 2), (((3, 2), (0, 1)), ((0,), (2,)))),
]


def _rounded(a):
    return a.astype(BF16).astype(jnp.float32)


def _rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _dot_dtypes(jaxpr) -> list[tuple[str, str]]:
    """Operand dtypes of every dot_general in a jaxpr, nested ones included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _dot_dtypes(sub)
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_mixed_dot_is_the_float32_product_of_bf16_operands(case):
    """Forward and both gradients equal exact float32 products of the bf16-rounded operands and cotangent
    (products of bf16 numbers are exact in float32; only the summation order differs), and differ from the
    unrounded float32 ones by bf16 rounding: the rounding really happens."""
    xs, ys, dims = CASES[case]
    seed = 100 + case
    kx, ky, kg = jax.random.split(jax.random.key(seed), 3)
    x, y = jax.random.normal(kx, xs), jax.random.normal(ky, ys)
    out, vjp = jax.vjp(lambda a, b: M.mixed_dot(a, b, dims, BF16), x, y)
    g = jax.random.normal(kg, out.shape)
    dx, dy = vjp(g)
    assert out.dtype == dx.dtype == dy.dtype == jnp.float32

    exact = lambda a, b: lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST)  # noqa: E731
    ref, ref_vjp = jax.vjp(exact, _rounded(x), _rounded(y))
    ref_dx, ref_dy = ref_vjp(_rounded(g))
    _, f32_vjp = jax.vjp(exact, x, y)
    f32_dx, f32_dy = f32_vjp(g)
    checks = (("out", out, ref, exact(x, y)), ("dx", dx, ref_dx, f32_dx), ("dy", dy, ref_dy, f32_dy))
    for name, got, want, f32 in checks:
        assert _rel(got, want) <= 1e-6, f"{name}: {_rel(got, want):.2e} from the rounded-operand product (seed {seed})"
        assert _rel(got, f32) >= 1e-4, f"{name}: equals the float32 product, no bf16 rounding (seed {seed})"


def test_mixed_dot_backward_multiplies_in_bf16(monkeypatch):
    """The gradient's products take bf16 operands: all three on accelerators; on CPU the weight-gradient form
    (contracting the rows) in float32 from bf16 values, because XLA's CPU backend has no bf16 kernel for it."""
    x, y = jnp.ones((4, 6, 8)), jnp.ones((8, 5))
    dims = (((2,), (0,)), ((), ()))
    grad = jax.grad(lambda a, b: jnp.sum(M.mixed_dot(a, b, dims, BF16)), argnums=(0, 1))
    assert sorted(_dot_dtypes(jax.make_jaxpr(grad)(x, y).jaxpr)) == [("bfloat16",) * 2] * 2 + [("float32",) * 2]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # traced only, never run
    x = jnp.ones((3, 6, 8))  # another shape: a fresh trace
    assert _dot_dtypes(jax.make_jaxpr(grad)(x, y).jaxpr) == [("bfloat16",) * 2] * 3


def test_float32_stays_plain_dot_general():
    x, y = jnp.ones((4, 8)), jnp.ones((8, 5))
    jaxpr = jax.make_jaxpr(lambda a, b: M.mixed_dot(a, b, (((1,), (0,)), ((), ())), jnp.float32))(x, y)
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns] == ["dot_general"]
    layer = M._Linear(8, 5, rngs=nnx.Rngs(0))
    assert layer.dot_general is lax.dot_general and layer.preferred_element_type == jnp.float32


def test_bf16_layers_are_built_alike():
    """One dot function per dtype: two bf16 models built alike have equal graph definitions (no retracing)."""
    a = M._Linear(8, 5, dtype=BF16, rngs=nnx.Rngs(0))
    b = M._Linear(8, 5, dtype=BF16, rngs=nnx.Rngs(1))
    assert a.dot_general is b.dot_general and nnx.graphdef(a) == nnx.graphdef(b)
    out = a(jnp.ones((2, 8)))
    assert out.dtype == jnp.float32 and a.kernel[...].dtype == jnp.float32


TINY = "n_audio_state=64,n_text_state=64,n_audio_head=2,n_text_head=2,n_audio_layer=2,n_text_layer=2"


def test_bf16_gradients_follow_float32():
    """The whole model's loss gradient in bf16 compute is the float32 one up to bf16 rounding (relative L2
    <= 5e-2 per parameter tensor, 8-bit mantissas through 2 + 2 layers), its gradients are float32, and it is
    not the float32 computation."""
    seed = 7
    batch = T.device_batch(train_batch(2, 200, 16, 51864, seed=seed))
    grads = {}
    for dtype in ("float32", "bfloat16"):
        tc = TrainConfig(model=TINY, dropout=0.0, dtype=dtype, seed=seed)
        cfg = tc.model_config()
        tm = T.init_model(tc, cfg)

        grads[dtype] = nnx.state(nnx.grad(lambda m, n=cfg.n_mels: T.batch_losses(m, batch, n_mels=n)["ce"])(tm),
                                 nnx.Param)
    flat32 = dict(jax.tree_util.tree_leaves_with_path(grads["float32"]))
    flat16 = dict(jax.tree_util.tree_leaves_with_path(grads["bfloat16"]))
    assert flat32.keys() == flat16.keys()
    worst = 0.0
    for path, g32 in flat32.items():
        g16 = flat16[path]
        assert g16.dtype == jnp.float32, jax.tree_util.keystr(path)
        norm = float(jnp.linalg.norm(g32))
        if norm == 0:
            continue
        err = float(jnp.linalg.norm(g16 - g32)) / norm
        assert err <= 5e-2, f"{jax.tree_util.keystr(path)}: bf16 gradient {err:.3e} from float32 (seed {seed})"
        worst = max(worst, err)
    assert worst > 1e-4, "bfloat16 gradients equal the float32 ones: computed in float32"


def test_bf16_train_step_runs():
    """A jitted bf16 train step on CPU compiles and runs (XLA's CPU backend rejects some bf16 product forms at
    run time, not at trace time), lowering the loss on a repeated batch."""
    tc = dataclasses.replace(TrainConfig(model=TINY, dtype="bfloat16", dropout=0.0), max_lr=1e-3, warmup_steps=1)
    cfg = tc.model_config()
    tm = T.init_model(tc, cfg)
    opt = T.optimizer_for(tm, tc, 100)
    batch = T.device_batch(train_batch(2, 200, 16, cfg.n_vocab))
    kw = dict(n_mels=cfg.n_mels, label_smoothing=0.0, ctc_weight=0.0, grad_accum=1)
    losses = [float(T.train_step(tm, opt, batch, **kw)["loss"]) for _ in range(4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
