"""The model's dropout (``jax_whisper.model.Dropout``): its bits are Threefry-2x32, and it drops at the rate it
claims, scales kept values exactly, draws fresh masks per call and is the identity in eval mode."""

import jax
import jax.extend.random as jr
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_whisper.model import Dropout, threefry_bits

SEED = 20261201


def test_threefry_bits_are_jax_threefry_of_the_element_index():
    key = jax.random.key(SEED)
    shape = (3, 5, 7)
    n = int(np.prod(shape))
    ref = jr.threefry_2x32(jax.random.key_data(key), jnp.concatenate([jnp.arange(n, dtype=jnp.uint32),
                                                                        jnp.zeros(n, jnp.uint32)]))[:n]
    assert bool(jnp.all(threefry_bits(key, shape) == ref.reshape(shape))), f"seed {SEED}"
    other = threefry_bits(jax.random.key(SEED, impl="rbg"), shape)  # 4-word keys are hashed to two words
    assert other.shape == shape and other.dtype == jnp.uint32


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_scale_and_fresh_masks(rate):
    drop = Dropout(rate, rngs=nnx.Rngs(dropout=SEED))
    x = jnp.full((1000, 1000), 2.0)
    a, b = drop(x), drop(x)
    for y in (a, b):
        kept = np.asarray(y != 0)
        frac = kept.mean()
        sigma = np.sqrt(rate * (1 - rate) / kept.size)
        assert abs(frac - (1 - rate)) <= 5 * sigma, f"seed {SEED}: kept {frac:.5f}, expected {1 - rate}"
        np.testing.assert_array_equal(np.asarray(y)[kept], np.float32(2.0) * np.float32(1 / (1 - rate)))
    same = float(jnp.mean((a != 0) == (b != 0)))
    assert abs(same - (rate**2 + (1 - rate) ** 2)) < 0.01, f"seed {SEED}: masks of two calls agree on {same:.3f}"
    drop.eval()
    assert drop(x) is x


def test_dropout_gradient_is_the_mask():
    def loss(d, x):
        y = d(x)
        return jnp.sum(y), y

    drop = Dropout(0.25, rngs=nnx.Rngs(dropout=SEED))
    x = jnp.arange(1.0, 401.0).reshape(20, 20)
    (_, y), g = nnx.jit(nnx.value_and_grad(loss, argnums=1, has_aux=True))(drop, x)
    assert 0 < int(jnp.sum(y == 0)) < x.size
    np.testing.assert_array_equal(np.asarray(g), np.where(np.asarray(y) != 0, np.float32(1 / 0.75), 0.0))
