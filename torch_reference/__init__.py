"""The canonical PyTorch Whisper: model, log-mel frontend and trainer. Never imports jax."""
