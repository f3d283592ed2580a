"""Whisper in JAX / Flax NNX.

Importing the package is cheap and imports neither jax nor torch: submodules (``model``, ``audio``,
``convert``, ...) pull in what they need.
"""

__version__ = "0.1.0"
