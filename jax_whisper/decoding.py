"""Decoding 30 s windows on device: greedy, sampling (best-of-N) and beam search, as openai-whisper's ``decode``.

The whole token loop runs under ``jit`` in one ``lax.while_loop`` over the model's fixed-size key/value cache,
batched over windows. Three compiled pieces:

* :func:`_prefill` runs each row's prompt (``<|startofprev|>`` + previous text, the sot sequence, a prefix)
  through the decoder once. Prompts are right-padded to a length bucket and the cache offset is set per row to the
  real length, so rows with different prompts share one batch and the padding slots are overwritten before any
  query can see them.
* :func:`_search` is the loop: logit filters (suppress tokens, suppress blank, openai-whisper's timestamp rules)
  as array ops on the sampled tokens so far, then argmax / categorical sampling, or a beam-search step whose
  finished-candidate bookkeeping also stays on device; finally the length-penalised ranking of the candidates.
  It compiles once per (batch, :class:`_Spec`); the prompt length is data, not shape.
* the encoder (:func:`embed_audio`).

Semantics follow openai-whisper (``whisper/decoding.py``) step for step, so on the same weights the two produce
the same tokens (checked in ``parity_tests/test_decoding.py``). Two deliberate differences: a finished audio's
beams freeze (openai keeps extending them while other audios of the batch are unfinished, which changes nothing
for patience >= 1), and an English-only model decodes with ``language=None`` as English instead of raising.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array, lax

from jax_whisper.model import stack_blocks
from jax_whisper.tokenizer import Tokenizer, get_tokenizer, normalize_language

# Seconds per timestamp token: the vocabulary's <|0.02|> step. openai-whisper derives it as 30 s / n_audio_ctx,
# the same for every OpenAI model; ours also holds for configs with a shorter window.
TIME_PRECISION = 0.02

# How often each compiled piece has been traced (a Python side effect that runs only while tracing), so tests
# can check that calls of the same shapes reuse one compilation.
_TRACE_COUNT = {"search": 0, "prefill": 0, "alignment": 0}

NEG_INF = -jnp.inf


@dataclass(frozen=True)
class DecodingOptions:
    """openai-whisper's ``DecodingOptions`` (same names and defaults) plus ``seed`` for sampling."""

    task: str = "transcribe"
    language: str | None = None  # None: detect (multilingual models); English-only models are English
    temperature: float = 0.0
    sample_len: int | None = None  # most tokens to sample; default n_text_ctx // 2
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beam search (any temperature, as openai-whisper)
    patience: float | None = None  # beam search stops after beam_size * patience finished candidates
    length_penalty: float | None = None  # None: rank by logprob / length; alpha: Google NMT's ((5 + len) / 6)^alpha
    prompt: str | Sequence[int] | None = None  # previous text, after <|startofprev|>
    prefix: str | Sequence[int] | None = None  # forced start of this window's text
    suppress_tokens: str | Iterable[int] | None = "-1"  # ids or "1,2,3"; -1 stands for the non-speech set
    suppress_blank: bool = True  # no blank (" " or eot) as the first token
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    seed: int = 0  # sampling RNG

    def __post_init__(self):
        if self.beam_size is not None and self.best_of is not None:
            raise ValueError("beam_size and best_of can't be given together")
        if self.temperature == 0 and self.best_of is not None:
            raise ValueError("best_of with greedy sampling (T=0) is not compatible")
        if self.patience is not None and self.beam_size is None:
            raise ValueError("patience requires beam_size to be given")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise ValueError("length_penalty (alpha) should be a value between 0 and 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        for name in ("beam_size", "best_of", "sample_len"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | np.integer) and v >= 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.beam_size is not None and round(self.beam_size * (self.patience or 1.0)) < 1:
            raise ValueError(f"invalid beam size ({self.beam_size}) or patience ({self.patience})")


@dataclass(frozen=True)
class DecodingResult:
    language: str | None
    tokens: list[int]  # sampled tokens (text and timestamps), without the final eot
    text: str
    avg_logprob: float  # sum of the sampled tokens' log-probs (eot included) / (len(tokens) + 1)
    no_speech_prob: float  # P(<|nospeech|>) at <|startoftranscript|>; nan without that token
    temperature: float
    compression_ratio: float
    language_probs: dict[str, float] | None = None
    sum_logprob: float = math.nan


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression: high for repetitive (looping) output."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))


# ==========================================================================================================
# The compiled pieces
# ==========================================================================================================


@dataclass(frozen=True)
class _Spec:
    """Everything about the search that fixes the compiled program (a static argument)."""

    n_group: int  # rows per audio: beams, best-of samples, or 1
    beam: bool
    sample: bool  # categorical sampling (temperature > 0) instead of argmax
    sample_len: int
    max_candidates: int  # beam search: finished sequences that end the search (round(beam_size * patience))
    length_penalty: float | None
    eot: int
    n_ctx: int
    blank: tuple[int, ...] = ()  # suppressed at the first step (suppress_blank)
    timestamp_begin: int | None = None  # set: apply the timestamp rules
    no_timestamps: int | None = None
    max_initial_timestamp: int | None = None  # in timestamp steps
    no_speech: int | None = None


def _check_eval_mode(model: nnx.Module) -> None:
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Dropout) and module.rate > 0 and not module.deterministic:
            name = ".".join(map(str, path)) or "model"
            raise ValueError(f"{name} is a Dropout(rate={module.rate}) in training mode: call model.eval() "
                             "before decoding (and model.train() to resume training)")


class _Graph:
    """A model's static half (``nnx.split``'s graphdef) as a ``jax.jit`` static argument whose hash is computed
    once: hashing the graphdef itself costs ~2 ms a call for tiny.en, comparing two equal ones ~3 ms."""

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef):
        self.graphdef, self._hash = graphdef, hash(graphdef)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return self is other or (isinstance(other, _Graph) and self._hash == other._hash
                                 and self.graphdef == other.graphdef)


class Prepared:
    """A model in eval mode split once into its static graph and its arrays, for the jitted decoding pieces.

    Every function here taking ``model`` accepts a Prepared model or prepares the module itself (see
    :func:`prepare`). ``nnx.jit`` walks the whole module graph at every call (~50 ms for tiny.en, several times
    per 30 s window). A snapshot: weights updated afterwards are not seen (prepare again)."""

    def __init__(self, model: nnx.Module, graphdef=None, state=None):
        _check_eval_mode(model)
        if graphdef is None:
            graphdef, state = nnx.split(model)
        # nnx.split's State holds the module's own Variables, which an optimizer update (nnx.update) refills in
        # place: rebuilt Variables over today's arrays make this a snapshot, as the cached pieces below are.
        state = jax.tree.map(lambda x: x, state)
        self.state, self.graph, self.cfg = state, _Graph(graphdef), model.cfg
        self.arrays = jax.tree.leaves(state)  # what prepare() compares, by identity
        self._unembed = None
        self._encoder_blocks = None
        self._scan_encoder = model.encoder.scan

    @property
    def unembed(self) -> Array:
        """The vocabulary projection as every decoding step reads it (``TextDecoder.unembedding``), made on first
        use: a copy of the embedding on CPU (tiny.en: 80 MB, ~40 ms), so once per Prepared, not per window."""
        if self._unembed is None:
            self._unembed = _unembedding(self.graph, self.state)
        return self._unembed

    @property
    def encoder_blocks(self):
        """The encoder blocks' state stacked for the layer scan (``model.stack_blocks``), made on first use, or
        None for an unrolled encoder. Stacking copies every block's weights (tiny.en 30 MB in ~13 ms here, a
        large model's 2.5 GB on every window), so it is done once per Prepared; the copy stays with it."""
        if self._encoder_blocks is None and self._scan_encoder:
            self._encoder_blocks = _stack_encoder(self.graph, self.state)
        return self._encoder_blocks


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its last Prepared


def prepare(model: nnx.Module | Prepared) -> Prepared:
    """``model`` as a :class:`Prepared`. The last one made for a module is reused while the module still has
    the same structure and modes and holds the very same arrays (any update replaces them: JAX arrays are
    immutable), so calling :func:`jax_whisper.transcribe.transcribe` file after file re-splits the module but
    keeps the transposed embedding and the compiled programs' static argument."""
    if isinstance(model, Prepared):
        return model
    graphdef, state = nnx.split(model)
    last = _PREPARED.get(model)
    leaves = jax.tree.leaves(state)
    if last is not None and last.graph.graphdef == graphdef and all(
            a is b for a, b in zip(last.arrays, leaves, strict=True)):
        return last
    _PREPARED[model] = prepared = Prepared(model, graphdef, state)
    return prepared


def _merge(graph: _Graph, state):
    return nnx.merge(graph.graphdef, state)


@partial(jax.jit, static_argnums=0)
def _unembedding(graph: _Graph, state) -> Array:
    return _merge(graph, state).decoder.unembedding()


@partial(jax.jit, static_argnums=0)
def _stack_encoder(graph: _Graph, state):
    return stack_blocks(_merge(graph, state).encoder.blocks)


@partial(jax.jit, static_argnums=0)
def _embed(graph: _Graph, state, blocks, mel: Array) -> Array:
    return _merge(graph, state).embed_audio(mel, blocks)


def embed_audio(model: nnx.Module | Prepared, mel: Array | np.ndarray) -> Array:
    """Encoder output (B, n_audio_ctx, n_audio_state) of a log-mel batch (B, n_mels, 2 * n_audio_ctx)."""
    model = prepare(model)
    return _embed(model.graph, model.state, model.encoder_blocks, jnp.asarray(mel, jnp.float32))


@partial(jax.jit, static_argnums=0, static_argnames=("max_len",))
def _prefill(graph: _Graph, state, unembed: Array, features: Array, tokens: Array, lengths: Array,
             sot_index: Array, max_len: int | None = None):
    """Run the (B, P) right-padded prompts; returns the cache (``max_len`` self-attention slots, default the
    text context) with each row's offset at its real length, the logits that pick the first token (at
    length - 1) and those at ``<|startoftranscript|>`` (no-speech)."""
    _TRACE_COUNT["prefill"] += 1
    model = _merge(graph, state)
    cache = model.init_cache(features, max_len)
    select = jnp.stack([lengths - 1, sot_index], axis=1)
    logits, cache = model.logits(tokens, features, cache, select=select, unembed=unembed)
    return cache.replace(offset=lengths), logits[:, 0], logits[:, 1]


def _filter(logits: Array, out: Array, i: Array, bias: Array, spec: _Spec) -> Array:
    """openai-whisper's logit filters in its order (SuppressBlank, SuppressTokens, ApplyTimestampRules) as
    masks. ``out`` (N, S) holds the sampled tokens, ``i`` how many there are (the same for all rows)."""
    vocab = jnp.arange(logits.shape[-1])
    if spec.blank:
        logits = jnp.where((i == 0) & jnp.isin(vocab, jnp.asarray(spec.blank)), NEG_INF, logits)
    logits = logits + bias  # 0 or -inf
    tb = spec.timestamp_begin
    if tb is None:
        return logits
    is_ts = vocab >= tb
    if spec.no_timestamps is not None:  # <|notimestamps|> is without_timestamps' job
        logits = jnp.where(vocab == spec.no_timestamps, NEG_INF, logits)

    # Timestamps come in pairs (start, end), except a lone one right before eot.
    last = out[:, jnp.maximum(i - 1, 0)]
    penultimate = out[:, jnp.maximum(i - 2, 0)]
    last_ts = (i >= 1) & (last >= tb)
    penultimate_ts = (i < 2) | (penultimate >= tb)
    pair_closed = (last_ts & penultimate_ts)[:, None]  # after "<a><b>" text must follow
    pair_open = (last_ts & ~penultimate_ts)[:, None]  # after "text<a>" a timestamp or eot must follow
    logits = jnp.where(pair_closed & is_ts | pair_open & (vocab < spec.eot), NEG_INF, logits)

    # Timestamps never decrease, and a segment must have nonzero length (else the model can loop in place).
    pos = jnp.arange(out.shape[1])
    seen = (out >= tb) & (pos < i)
    has_ts = seen.any(axis=1)
    ts_last = jnp.take_along_axis(out, jnp.max(jnp.where(seen, pos, 0), axis=1)[:, None], axis=1)[:, 0]
    bound = jnp.where(last_ts & ~penultimate_ts, ts_last, ts_last + 1)
    logits = jnp.where(has_ts[:, None] & is_ts & (vocab < bound[:, None]), NEG_INF, logits)

    # The first token is a timestamp, at most max_initial_timestamp in.
    first = ~is_ts
    if spec.max_initial_timestamp is not None:
        first |= vocab > tb + spec.max_initial_timestamp
    logits = jnp.where((i == 0) & first, NEG_INF, logits)

    # When the timestamps together outweigh every single text token, emit a timestamp.
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    ts_mass = jax.nn.logsumexp(jnp.where(is_ts, logprobs, NEG_INF), axis=-1)
    text_max = jnp.max(jnp.where(is_ts, NEG_INF, logprobs), axis=-1)
    return jnp.where((ts_mass > text_max)[:, None] & ~is_ts, NEG_INF, logits)


def _argmax(x: Array) -> Array:
    """``jnp.argmax(x, -1)`` (the first maximum) as a max and a min-reduction: XLA's CPU argmax is a variadic
    reduction several times slower over a 51,864-entry vocabulary (0.24 ms a decoding step). A row with a NaN
    (a broken model) gives the last id instead of the NaN's."""
    n = x.shape[-1]
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.minimum(jnp.min(jnp.where(x == top, jnp.arange(n), n), axis=-1), n - 1)


def _lengths(tokens: Array, eot: int) -> Array:
    """Tokens before the first eot along the last axis (all of them if there is none)."""
    is_eot = tokens == eot
    return jnp.where(is_eot.any(-1), jnp.argmax(is_eot, axis=-1), tokens.shape[-1])


def _rank(tokens: Array, lengths: Array, scores: Array, valid: Array, length_penalty: float | None):
    """openai-whisper's MaximumLikelihoodRanker over (B, K) candidates: the first best of
    sum_logprob / length, or / ((5 + length) / 6) ** alpha."""
    n = lengths.astype(jnp.float32)
    penalty = n if length_penalty is None else ((5.0 + n) / 6.0) ** length_penalty
    best = jnp.argmax(jnp.where(valid, scores / penalty, NEG_INF), axis=1)
    take = lambda a: jnp.take_along_axis(a, best.reshape((-1,) + (1,) * (a.ndim - 1)), axis=1)[:, 0]  # noqa: E731
    return take(tokens), take(lengths), take(scores)


@partial(jax.jit, static_argnums=0, static_argnames=("spec",))
def _search(graph: _Graph, state, unembed: Array, features: Array, cache, first_logits: Array,
            sot_logits: Array, lengths: Array, bias: Array, temperature: Array, key: Array, spec: _Spec):
    """The decoding loop for B audios (``spec.n_group`` rows each). Returns per audio the selected tokens
    (B, sample_len) padded with eot, their count, summed log-prob, the no-speech probability, and the number
    of loop steps taken."""
    _TRACE_COUNT["search"] += 1
    model = _merge(graph, state)
    n_audio, G, S, eot = features.shape[0], spec.n_group, spec.sample_len, spec.eot
    N = n_audio * G
    # Token i (0-based) is predicted at position length + i - 1, which must exist: at most n_ctx - length + 1.
    limit = jnp.minimum(S, spec.n_ctx - lengths + 1)
    if spec.no_speech is not None:
        no_speech = jax.nn.softmax(sot_logits, axis=-1)[:, spec.no_speech]
    else:
        no_speech = jnp.full((n_audio,), jnp.nan, jnp.float32)
    if G > 1:  # every row of a group starts from the same prompt; the audio side stays one row per audio
        cache = cache.replace(k=[jnp.repeat(x, G, axis=0) for x in cache.k],
                              v=[jnp.repeat(x, G, axis=0) for x in cache.v], offset=jnp.repeat(cache.offset, G))
        first_logits = jnp.repeat(first_logits, G, axis=0)
    out = jnp.full((N, S), eot, jnp.int32)
    sum_lp = jnp.zeros((N,), jnp.float32)

    if not spec.beam:
        row_limit = jnp.repeat(limit, G)

        def select(state, logits):
            i, out, sum_lp, done, cache, key = state
            logits = _filter(logits, out, i, bias, spec)
            if spec.sample:
                key, sub = jax.random.split(key)
                token = jax.random.categorical(sub, logits / temperature, axis=-1)
            else:
                token = _argmax(logits)
            lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=1)[:, 0]
            active = ~done & (i < row_limit)
            token = jnp.where(active, token, eot).astype(jnp.int32)  # finished rows are padded with eot
            sum_lp = sum_lp + jnp.where(active, lp, 0.0)
            out = lax.dynamic_update_slice_in_dim(out, token[:, None], i, axis=1)
            return i + 1, out, sum_lp, done | (token == eot), cache, key

        def running(state):
            i, _, _, done, _, _ = state
            return jnp.any(~done & (i < row_limit))

        state = select((jnp.int32(0), out, sum_lp, jnp.zeros((N,), bool), cache, key), first_logits)
    else:
        C = spec.max_candidates
        rows = jnp.arange(n_audio)[:, None]
        n_cand = G * (G + 1)  # each beam proposes its G + 1 best continuations (at most one of them is eot)
        cand_beam = jnp.repeat(jnp.arange(G), G + 1)

        def select(state, logits):
            i, out, sum_lp, fin, cache, key = state
            fin_tokens, fin_len, fin_score, fin_count = fin
            active = (i < limit) & (fin_count < C)  # per audio; a finished audio freezes
            logits = _filter(logits, out, i, bias, spec)
            lp, tok = lax.top_k(jax.nn.log_softmax(logits, axis=-1), G + 1)  # (N, G + 1)
            score = (sum_lp[:, None] + lp).reshape(n_audio, n_cand)
            tok = tok.reshape(n_audio, n_cand).astype(jnp.int32)
            # At the first step all beams are the same sequence: openai's dict keeps one copy of each candidate.
            dup = jnp.broadcast_to((i == 0) & (cand_beam > 0), (n_audio, n_cand))
            # Stable order by score (ties: beam, then rank within the beam, as Python's sorted over dict order).
            _, _, order = lax.sort((dup.astype(jnp.int32), -score, jnp.broadcast_to(jnp.arange(n_cand), dup.shape)),
                                   dimension=1, num_keys=3)
            score, tok = (jnp.take_along_axis(a, order, axis=1) for a in (score, tok))
            beam = cand_beam[order]
            is_eot = tok == eot
            # Walk down the ranking: continuations fill the G beams; eot candidates met before that are finished.
            before = jnp.cumsum(~is_eot, axis=1) - ~is_eot
            keep = ~is_eot & (before < G)
            done_now = is_eot & (before < G) & ~jnp.take_along_axis(dup, order, axis=1)
            kept = jnp.argsort((~keep).astype(jnp.int8), axis=1, stable=True)[:, :G]  # exactly G, best first
            src = jnp.take_along_axis(beam, kept, axis=1)
            src_rows = (rows * G + src).reshape(N)
            new_out = lax.dynamic_update_slice_in_dim(out[src_rows], jnp.take_along_axis(tok, kept, 1).reshape(N, 1),
                                                      i, axis=1)
            new_sum = jnp.take_along_axis(score, kept, axis=1).reshape(N)

            # Newly finished candidates join the list in score order while it has room (openai: max_candidates).
            newly = jnp.argsort((~done_now).astype(jnp.int8), axis=1, stable=True)[:, :G]
            n_new = done_now.sum(axis=1)
            slot = fin_count[:, None] + jnp.arange(G)
            ok = (jnp.arange(G) < n_new[:, None]) & (slot < C) & active[:, None]
            slot = jnp.where(ok, slot, C)  # out of range: dropped
            finished_rows = out[(rows * G + jnp.take_along_axis(beam, newly, axis=1))]  # (B, G, S), eot from i on
            fin_tokens = fin_tokens.at[rows, slot].set(finished_rows, mode="drop")
            fin_len = fin_len.at[rows, slot].set(i, mode="drop")
            fin_score = fin_score.at[rows, slot].set(jnp.take_along_axis(score, newly, axis=1), mode="drop")
            fin_count = fin_count + ok.sum(axis=1)

            row_active = jnp.repeat(active, G)
            src_rows = jnp.where(row_active, src_rows, jnp.arange(N))
            out = jnp.where(row_active[:, None], new_out, out)
            sum_lp = jnp.where(row_active, new_sum, sum_lp)
            return i + 1, out, sum_lp, (fin_tokens, fin_len, fin_score, fin_count), cache.reorder_self(src_rows), key

        def running(state):
            i, _, _, fin, _, _ = state
            return jnp.any((i < limit) & (fin[3] < C))

        K = max(C, G)
        fin = (jnp.full((n_audio, K, S), eot, jnp.int32), jnp.zeros((n_audio, K), jnp.int32),
               jnp.full((n_audio, K), NEG_INF, jnp.float32), jnp.zeros((n_audio,), jnp.int32))
        state = select((jnp.int32(0), out, sum_lp, fin, cache, key), first_logits)

    def body(state):
        i, out, sum_lp, extra, cache, key = state
        prev = lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)  # the last token, fed at its position
        logits, cache = model.logits(prev, features, cache, unembed=unembed)
        return select((i, out, sum_lp, extra, cache, key), logits[:, -1])

    steps, out, sum_lp, extra, _, _ = lax.while_loop(lambda s: running(s) & (s[0] < S), body, state)

    if not spec.beam:
        tokens = out.reshape(n_audio, G, S)
        valid = jnp.ones((n_audio, G), bool)
        tokens, n, score = _rank(tokens, _lengths(tokens, eot), sum_lp.reshape(n_audio, G), valid,
                                 spec.length_penalty)
    else:
        # Too few finished: the live beams join, best first (openai: np.argsort reversed), until there are G.
        fin_tokens, fin_len, fin_score, fin_count = extra
        beams, beam_sum = out.reshape(n_audio, G, S), sum_lp.reshape(n_audio, G)
        order = jnp.argsort(beam_sum, axis=1, stable=True)[:, ::-1]
        slot = fin_count[:, None] + jnp.arange(G)
        slot = jnp.where(slot < G, slot, fin_tokens.shape[1])
        fin_tokens = fin_tokens.at[rows, slot].set(jnp.take_along_axis(beams, order[..., None], axis=1), mode="drop")
        fin_len = fin_len.at[rows, slot].set(_lengths(beams, eot)[rows, order], mode="drop")
        fin_score = fin_score.at[rows, slot].set(jnp.take_along_axis(beam_sum, order, axis=1), mode="drop")
        count = jnp.maximum(fin_count, G)
        valid = jnp.arange(fin_tokens.shape[1]) < count[:, None]
        tokens, n, score = _rank(fin_tokens, fin_len, fin_score, valid, spec.length_penalty)
        tokens = jnp.where(jnp.arange(S) < n[:, None], tokens, eot)
    return tokens, n, score, no_speech, steps


# ==========================================================================================================
# Host side: options -> prompts, filters and spec; results
# ==========================================================================================================


def _cache_len(width: int, sample_len: int, n_ctx: int) -> int:
    """Self-attention slots a search needs: token i (0-based) is fed at position length + i - 1 < width +
    sample_len, and no position reaches n_ctx (``_search``'s limit)."""
    return min(width + sample_len, n_ctx)


def _bucket(n: int, cap: int) -> int:
    """Prompt lengths are padded to a power of two (>= 8, <= cap) so varying prompts share few compilations."""
    return min(max(8, 1 << (n - 1).bit_length()), cap)


def suppress_tokens(tokenizer: Tokenizer, suppress: str | Iterable[int] | None) -> tuple[int, ...]:
    """openai-whisper's suppressed ids: ``suppress`` ("-1" or -1 = the non-speech set) plus the task and
    control tokens, which are never text (<|nospeech|> is read separately, as a probability). An empty
    ``suppress`` ("" or None) suppresses nothing at all, not even the control tokens (openai-whisper then skips
    the filter)."""
    if not suppress:
        return ()
    if isinstance(suppress, str):
        ids = [int(t) for t in suppress.split(",") if t.strip()]
    else:
        ids = [int(t) for t in suppress or ()]
    if -1 in ids:
        ids = [t for t in ids if t >= 0] + list(tokenizer.non_speech_tokens)
    ids += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm,
            tokenizer.no_speech]
    return tuple(sorted({t for t in ids if t is not None}))


def _encode(tokenizer: Tokenizer, text: str | Sequence[int]) -> list[int]:
    return tokenizer.encode(" " + text.strip()) if isinstance(text, str) else [int(t) for t in text]


def initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, n_ctx: int,
                   prompt: str | Sequence[int] | None = None) -> tuple[int, ...]:
    """The decoder's prompt as openai-whisper builds it: [<|startofprev|> + the last n_ctx // 2 - 1 prompt
    tokens] + sot sequence [+ <|notimestamps|>] [+ prefix]. ``prompt`` defaults to ``options.prompt``."""
    tokens = list(tokenizer.sot_sequence_including_notimestamps if options.without_timestamps
                  else tokenizer.sot_sequence)
    if options.prefix:
        prefix = _encode(tokenizer, options.prefix)
        sample_len = options.sample_len or n_ctx // 2
        tokens += prefix[-(n_ctx // 2 - sample_len):]  # openai's slice: a zero budget keeps the whole prefix
    prompt = options.prompt if prompt is None else prompt
    if prompt:
        tokens = [tokenizer.sot_prev, *_encode(tokenizer, prompt)[-(n_ctx // 2 - 1):], *tokens]
    return tuple(tokens)


def _text(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    # openai-whisper's decode drops timestamps only: a stray language token stays in the text, and so in the
    # compression ratio that drives the temperature fallback.
    return tokenizer.encoding.decode([t for t in tokens if t < (tokenizer.timestamp_begin or tokenizer.eot + 1)
                                      and t != tokenizer.eot])


@partial(jax.jit, static_argnums=0)
def _language_logits(graph: _Graph, state, features: Array, sot: Array) -> Array:
    return _merge(graph, state).logits(jnp.broadcast_to(sot, (features.shape[0], 1)), features)[:, 0]


def detect_language(model, features: Array, tokenizer: Tokenizer | None = None
                    ) -> tuple[list[str], list[dict[str, float]]]:
    """Most likely language of each window from the logits after ``<|startoftranscript|>``, restricted to the
    language tokens, as openai-whisper: ``(codes, probabilities)``. ``features`` is the encoder output."""
    model = prepare(model)
    tokenizer = tokenizer or get_tokenizer(model.cfg)
    if not tokenizer.is_multilingual:
        raise ValueError("this model has no language tokens, so it can't detect the language")
    logits = np.asarray(_language_logits(model.graph, model.state, features, jnp.int32(tokenizer.sot)), np.float64)
    ids = np.asarray(tokenizer.all_language_tokens)
    lang = logits[:, ids]
    probs = np.exp(lang - lang.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    codes = tokenizer.all_language_codes
    return ([codes[j] for j in lang.argmax(axis=1)],
            [dict(zip(codes, map(float, p), strict=True)) for p in probs])


@partial(jax.jit, static_argnums=(0, 5))
def _alignment(graph: _Graph, state, unembed: Array, features: Array, tokens: Array, eot: int):
    _TRACE_COUNT["alignment"] += 1
    model = _merge(graph, state)
    logits, qks = model.decoder(tokens, features, unembed=unembed, return_qk=True)
    qk = jnp.stack([qks[layer][:, head] for layer, head in model.alignment_heads], axis=1)
    logprobs = jax.nn.log_softmax(logits[:, :-1, :eot], axis=-1)  # the next token among the text tokens
    following = jnp.minimum(tokens[:, 1:], eot - 1)[..., None]  # (special tokens: probabilities unused)
    return qk, jnp.exp(jnp.take_along_axis(logprobs, following, axis=-1)[..., 0])


def alignment_attention(model, features: Array, tokens: Sequence[Sequence[int]], eot: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced cross-attention of the alignment heads (``model.alignment_heads``), for word timestamps.

    ``features`` (B, n_audio_ctx, n_audio_state) are the windows' encoder output, ``tokens`` one sequence per row
    (``sot_sequence + <|notimestamps|> + text + <|eot|>``). Returns ``(qk, probs)``: the heads' attention logits
    (B, heads, T, n_audio_ctx) and, at each position t, the probability of token t + 1 among the text tokens
    (below ``eot``), (B, T - 1); rows are right-padded to the longest sequence, rounded up to a multiple of 32
    so that few lengths compile (the decoder is causal: padding changes nothing before it).
    """
    model = prepare(model)
    longest = max(map(len, tokens))
    if longest > model.cfg.n_text_ctx:
        raise ValueError(f"a sequence of {longest} tokens exceeds the text context of {model.cfg.n_text_ctx}")
    width = min(-(-longest // 32) * 32, model.cfg.n_text_ctx)
    padded = np.full((len(tokens), width), eot, np.int32)
    for i, seq in enumerate(tokens):
        padded[i, : len(seq)] = seq
    qk, probs = _alignment(model.graph, model.state, model.unembed, features, jnp.asarray(padded), int(eot))
    return np.asarray(qk), np.asarray(probs)


def decode_features(model, features: Array, options: DecodingOptions = DecodingOptions(), *,
                    prompts: Sequence[str | Sequence[int] | None] | None = None,
                    languages: Sequence[str | None] | None = None,
                    key: Array | None = None) -> list[DecodingResult]:
    """Decode B windows from their encoder output ``features`` (B, n_audio_ctx, n_audio_state).

    ``prompts`` / ``languages`` give each row its own previous text / language (default: the options'); a
    language of None is detected on multilingual models. ``key`` is the sampling RNG (default from
    ``options.seed``). Returns one :class:`DecodingResult` per row.
    """
    model = prepare(model)
    cfg = model.cfg
    n_audio = features.shape[0]
    n_ctx = cfg.n_text_ctx
    languages = list(languages) if languages is not None else [options.language] * n_audio
    prompts = list(prompts) if prompts is not None else [options.prompt] * n_audio
    if len(languages) != n_audio or len(prompts) != n_audio:
        raise ValueError(f"{n_audio} windows but {len(prompts)} prompts and {len(languages)} languages")
    base = get_tokenizer(cfg, task=options.task if cfg.is_multilingual else None)
    language_probs: list[dict | None] = [None] * n_audio
    if base.is_multilingual and any(lang is None for lang in languages):
        codes, probs = detect_language(model, features, base)
        language_probs = [p if lang is None else None for lang, p in zip(languages, probs, strict=True)]
        languages = [c if lang is None else lang for lang, c in zip(languages, codes, strict=True)]
    if not base.is_multilingual:
        languages = [lang or "en" for lang in languages]
        if any(normalize_language(lang) != "en" for lang in languages):
            raise ValueError(f"this model is English-only; got languages {sorted(set(languages))}")
    tokenizers = [dataclasses.replace(base, language=lang if base.is_multilingual else None) for lang in languages]
    rows = [initial_tokens(tok, options, n_ctx, p) for tok, p in zip(tokenizers, prompts, strict=True)]
    lengths = np.array([len(r) for r in rows], np.int32)
    if lengths.max() > n_ctx:
        raise ValueError(f"the prompt takes {lengths.max()} tokens, more than the text context ({n_ctx})")
    width = _bucket(int(lengths.max()), n_ctx)
    tokens = np.full((n_audio, width), base.eot, np.int32)
    for r, row in enumerate(rows):
        tokens[r, : len(row)] = row
    sot_index = np.array([r.index(base.sot) for r in rows], np.int32)

    tok = tokenizers[0]
    beam = options.beam_size is not None
    sample_len = options.sample_len or n_ctx // 2
    timestamps = not options.without_timestamps and tok.timestamp_begin is not None
    max_initial = None
    if timestamps and options.max_initial_timestamp:
        max_initial = round(options.max_initial_timestamp / TIME_PRECISION)
    spec = _Spec(
        n_group=options.beam_size or options.best_of or 1, beam=beam,
        sample=not beam and options.temperature > 0, sample_len=sample_len,
        max_candidates=round((options.beam_size or 1) * (options.patience or 1.0)),
        length_penalty=options.length_penalty, eot=tok.eot, n_ctx=n_ctx,
        blank=(*tok.encode(" "), tok.eot) if options.suppress_blank else (),
        timestamp_begin=tok.timestamp_begin if timestamps else None,
        no_timestamps=tok.no_timestamps if timestamps else None,
        max_initial_timestamp=max_initial, no_speech=tok.no_speech,
    )
    bias = np.zeros(cfg.n_vocab, np.float32)
    suppressed = [t for t in suppress_tokens(tok, options.suppress_tokens) if t < cfg.n_vocab]
    bias[suppressed] = -np.inf
    key = jax.random.key(options.seed) if key is None else key

    # Slots for the padded prompt and every token the search may add, not the whole text context: each decoding
    # step rewrites and attends over all of them.
    cache, first, at_sot = _prefill(model.graph, model.state, model.unembed, features, jnp.asarray(tokens),
                                    jnp.asarray(lengths), jnp.asarray(sot_index),
                                    max_len=_cache_len(width, sample_len, n_ctx))
    out, n, score, no_speech, _ = jax.device_get(_search(
        model.graph, model.state, model.unembed, features, cache, first, at_sot, jnp.asarray(lengths),
        jnp.asarray(bias), jnp.float32(options.temperature), key, spec=spec))

    results = []
    for r in range(n_audio):
        toks = out[r, : n[r]].tolist()
        text = _text(tok, toks).strip()
        results.append(DecodingResult(
            language=languages[r], tokens=toks, text=text, avg_logprob=float(score[r]) / (len(toks) + 1),
            no_speech_prob=float(no_speech[r]), temperature=float(options.temperature),
            compression_ratio=compression_ratio(text), language_probs=language_probs[r],
            sum_logprob=float(score[r]),
        ))
    return results


def decode(model, mel: Array | np.ndarray, options: DecodingOptions = DecodingOptions(), **kwargs
           ) -> DecodingResult | list[DecodingResult]:
    """openai-whisper's ``decode``: log-mel windows (n_mels, 2 * n_audio_ctx) or (B, n_mels, 2 * n_audio_ctx)
    -> one result, or one per window. ``kwargs`` replace option fields. The model must be in eval mode."""
    if kwargs:
        options = dataclasses.replace(options, **kwargs)
    mel = jnp.asarray(mel, jnp.float32)
    single = mel.ndim == 2
    model = prepare(model)
    results = decode_features(model, embed_audio(model, mel[None] if single else mel), options)
    return results[0] if single else results


def greedy_tokens(model, features: Array, prompt: Sequence[int], *, eot: int, max_tokens: int,
                  suppress: Iterable[int] = ()) -> tuple[Array, Array]:
    """Plain batched greedy decoding with a fixed prompt and suppressed ids, no timestamp rules: ``(tokens
    (B, max_tokens) padded with eot, loop steps)``. The training loop's evaluation uses it."""
    model = prepare(model)
    n_audio, n_ctx = features.shape[0], model.cfg.n_text_ctx
    bias = np.zeros(model.cfg.n_vocab, np.float32)
    bias[list(suppress)] = -np.inf
    tokens = np.full((n_audio, _bucket(len(prompt), n_ctx)), eot, np.int32)
    tokens[:, : len(prompt)] = prompt
    lengths = jnp.full((n_audio,), len(prompt), jnp.int32)
    cache, first, at_sot = _prefill(model.graph, model.state, model.unembed, features, jnp.asarray(tokens), lengths,
                                    jnp.zeros((n_audio,), jnp.int32),
                                    max_len=_cache_len(tokens.shape[1], max_tokens, n_ctx))
    spec = _Spec(n_group=1, beam=False, sample=False, sample_len=max_tokens, max_candidates=1, length_penalty=None,
                 eot=eot, n_ctx=n_ctx)
    out, _, _, _, steps = _search(model.graph, model.state, model.unembed, features, cache, first, at_sot, lengths,
                                  jnp.asarray(bias), jnp.float32(0.0), jax.random.key(0), spec=spec)
    return out, steps


__all__ = ["DecodingOptions", "DecodingResult", "Prepared", "TIME_PRECISION", "alignment_attention",
           "compression_ratio", "decode",
           "decode_features", "detect_language", "embed_audio", "greedy_tokens", "initial_tokens", "prepare",
           "suppress_tokens"]
