"""Checkpoint formats, one module each, and the Flax <-> openai-whisper name mapping they share
(:mod:`~jax_whisper.formats.mapping`). :mod:`jax_whisper.convert` is the public façade over them."""
