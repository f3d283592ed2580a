"""Greedy decoding for the PyTorch reference: batched argmax over the model's fixed-size key/value cache.

Same semantics as :func:`jax_whisper.evaluate.greedy_decode` (never imports jax): the prompt runs through the
decoder once, then one token per iteration; a row that has emitted ``eot`` keeps emitting ``eot`` (the padding);
decoding stops when every row has finished, after ``max_tokens`` tokens, or when the text context is full
(``n_text_ctx - len(prompt) + 1`` tokens, openai-whisper's limit too); suppressed ids are never emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from jax_whisper.tokenizer import Tokenizer


def _check_eval_mode(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0 and module.training:
            raise ValueError(f"{name or 'model'} is a Dropout(p={module.p}) in training mode: call model.eval() "
                             "before decoding (and model.train() to resume training)")


def _check_arguments(model: nn.Module, prompt: tuple[int, ...], eot: int, max_tokens: int,
                     suppress: tuple[int, ...]) -> None:
    n_ctx = model.decoder.positional_embedding.shape[0]
    n_vocab = model.decoder.token_embedding.weight.shape[0]
    if not 0 < len(prompt) <= n_ctx:
        raise ValueError(f"prompt must hold 1..{n_ctx} (n_text_ctx) tokens, got {len(prompt)}")
    if not (isinstance(max_tokens, int | np.integer) and not isinstance(max_tokens, bool) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if eot in suppress:
        raise ValueError(f"suppress contains eot ({eot}): no row could ever finish")
    if not 0 <= eot < n_vocab or any(not 0 <= t < n_vocab for t in suppress):
        raise ValueError(f"eot {eot} and suppress ids must be in [0, {n_vocab}) (the model's vocabulary)")


@torch.no_grad()
def greedy_decode_features(model: nn.Module, audio_features: Tensor, prompt: Sequence[int], *, eot: int,
                           max_tokens: int, suppress: Iterable[int] | None = None) -> Tensor:
    """:func:`greedy_decode` from the encoder output ``audio_features`` (B, n_audio, n_audio_state), so a caller
    that already ran the encoder (the evaluation loop's teacher-forced loss) does not run it twice."""
    prompt = tuple(int(t) for t in prompt)
    suppress = tuple(sorted({int(t) for t in suppress or ()}))
    eot = int(eot)
    _check_arguments(model, prompt, eot, max_tokens, suppress)
    _check_eval_mode(model)
    xa = audio_features
    n_batch = xa.shape[0]
    n_ctx = model.decoder.positional_embedding.shape[0]
    # Token i (0-based) is predicted from position len(prompt) + i - 1, which must exist in the context.
    limit = min(int(max_tokens), n_ctx - len(prompt) + 1)

    cache = model.init_cache(xa, n_ctx)
    prompt_tokens = torch.tensor(prompt, dtype=torch.long, device=xa.device).expand(n_batch, -1)
    logits, cache = model.logits(prompt_tokens, xa, cache)
    bias = torch.zeros(logits.shape[-1], dtype=torch.float32, device=xa.device)
    bias[list(suppress)] = -torch.inf

    def pick(logits: Tensor) -> Tensor:
        return (logits[:, -1].float() + bias).argmax(dim=-1)  # ties: the first maximum, as jnp.argmax

    out = torch.full((n_batch, int(max_tokens)), eot, dtype=torch.long, device=xa.device)
    token = pick(logits)
    out[:, 0] = token
    done = token == eot
    i = 1
    while i < limit and not bool(done.all()):
        logits, cache = model.logits(out[:, i - 1 : i], xa, cache)  # the last token, fed at its position
        token = torch.where(done, eot, pick(logits))  # finished rows keep emitting eot: the padding
        out[:, i] = token
        done |= token == eot
        i += 1
    return out


@torch.no_grad()
def greedy_decode(model: nn.Module, mel: Tensor | np.ndarray, prompt: Sequence[int], *, eot: int,
                  max_tokens: int, suppress: Iterable[int] | None = None) -> Tensor:
    """Batched greedy (argmax) decoding with the key/value cache; returns ``(B, max_tokens)`` int64 tokens.

    ``mel``: (B, n_mels, frames) log-mel, frames even and at most ``2 * n_audio_ctx``. ``prompt``: the decoder
    prefix shared by all rows. ``suppress``: token ids never emitted. A row's tokens after its first ``eot`` are
    ``eot``; a row cut by ``max_tokens`` or by the text context (at most ``n_text_ctx - len(prompt) + 1``
    tokens) is padded with ``eot`` too. The model must be in eval mode; active dropout raises ValueError.
    """
    _check_eval_mode(model)
    mel = torch.as_tensor(np.asarray(mel) if not torch.is_tensor(mel) else mel, dtype=torch.float32)
    xa = model.embed_audio(mel.to(model.device))
    return greedy_decode_features(model, xa, prompt, eot=eot, max_tokens=max_tokens, suppress=suppress)


def decode_texts(tokenizer: Tokenizer, tokens: Tensor | np.ndarray) -> list[str]:
    """Each row of ``tokens`` cut at its first ``eot``, special tokens (ids >= eot) dropped, decoded, stripped."""
    return tokenizer.decode_batch(tokens.detach().cpu().numpy() if torch.is_tensor(tokens) else tokens)


__all__ = ["decode_texts", "greedy_decode", "greedy_decode_features"]
