"""The input pipeline: dataset sources -> length-bucketed, tokenized, padded batches, through grain.

Shared by the Flax and the PyTorch trainers (it imports neither jax nor torch), so both frameworks train on
identical batches. The plan of an epoch is computed from metadata only (durations and transcripts, no audio
decoded), deterministically from ``(seed, epoch)``:

* every utterance goes to the shortest **bucket** (a mel-frame length) that holds it, and every bucket has
  one token length (its longest transcript, rounded up to 8), so the jitted step compiles once per bucket
  and a 1.5 s utterance does not pay for 5 s of padding;
* each bucket is shuffled and cut into batches; a bucket's last partial batch is completed with utterances
  from the start of the same shuffle, so nothing is dropped and every batch is full;
* the batches of all buckets are shuffled together, or, during the first ``curriculum_epochs``, ordered
  shortest bucket first (SortaGrad), which helps the decoder align with the audio early;
* with ``timestamps = p``, an utterance whose speech start and end are known is trained in Whisper's timestamped
  form (``<|start|> text <|end|>`` instead of ``<|notimestamps|>`` text) with probability ``p``, drawn anew for
  every epoch from ``(seed, epoch, item)`` (distil-whisper's ``timestamp_probability``).

Step ``s`` of the run is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so the whole run is
a grain ``MapDataset`` indexed by step: decoding runs in grain's threads or worker processes, and the
iterator's state (a position) checkpoints and restores exactly. With several JAX processes each takes its
own rows of every global batch (``shard_index`` / ``shard_count``).

A batch is a dict of numpy arrays plus two lists::

    audio      float32 (B, frames * 160)   16 kHz samples, zero-padded to the bucket length
    n_samples  int32   (B,)                real samples per row
    tokens     int32   (B, T)              decoder input: SOT sequence + text, padded with eot
    targets    int32   (B, T)              next tokens, ending in eot, padding = IGNORE_ID (-100)
    ctc_labels int32   (B, L)              character ids for the optional CTC loss (0 = padding)
    ctc_paddings float32 (B, L)            1.0 where ctc_labels is padding (optax's convention)
    valid      bool    (B,)                False for filler rows (an unreadable utterance, an eval tail)
    id, text   list[str]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jax_whisper.config import DEFAULT_SPLITS, RunConfigError, TrainConfig, WhisperConfig
from jax_whisper.datasets import SAMPLE_RATE, DataError, Source, open_dataset
from jax_whisper.tokenizer import IGNORE_ID, Tokenizer, ctc_encode

log = logging.getLogger(__name__)

ARRAY_KEYS = ("audio", "n_samples", "tokens", "targets", "ctc_labels", "ctc_paddings", "valid")  # the non-list part
HOP_LENGTH = 160  # samples per mel frame (jax_whisper.audio.HOP_LENGTH; not imported: that module needs jax)


def frames_of(seconds: float) -> int:
    """Mel frames the model needs for ``seconds`` of audio, rounded up to even (the conv stem has stride 2)."""
    frames = math.ceil(seconds * SAMPLE_RATE / HOP_LENGTH)
    return frames + frames % 2


def quantile_buckets(durations: Sequence[float | None], n_frames: int, n_buckets: int = 5,
                     multiple: int = 16) -> tuple[int, ...]:
    """Bucket lengths at the duration quantiles of a training set (each rounded up to ``multiple`` frames), so
    about ``1/n_buckets`` of the data falls in each; the last is the model window ``n_frames``, so validation and
    test utterances longer than any training one still have a bucket."""
    known = [frames_of(d) for d in durations if d is not None]
    qs = np.quantile(np.asarray(known, float), [(i + 1) / n_buckets for i in range(n_buckets - 1)]) if known else []
    return tuple(sorted({min(n_frames, _round_up(int(math.ceil(q)), multiple)) for q in qs} | {n_frames}))


@dataclass(frozen=True)
class Item:
    """What the plan knows about one utterance, from metadata only."""

    index: int  # into the source
    bucket: int
    tokens: tuple[int, ...]
    targets: tuple[int, ...]
    ctc: tuple[int, ...]
    timestamped: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (tokens, targets) with timestamps


@dataclass
class PrepareStats:
    """Utterances kept and dropped while planning (besides the source's own drops)."""

    kept: int = 0
    too_many_tokens: int = 0  # transcript longer than the text context: dropped, never truncated
    too_long: int = 0  # longer than the largest bucket
    untimed: int = 0  # with timestamps asked for: kept, but always trained without them (no speech times known)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Plan:
    """The bucketed, tokenized view of a source: what every step of every epoch contains.

    Only metadata is read here. Items without a duration (hub sources that only know it after decoding) go
    to the largest bucket.
    """

    def __init__(self, source: Source, tokenizer: Tokenizer, *, n_text_ctx: int, buckets: Sequence[int],
                 batch_size: int, seed: int = 0, curriculum_epochs: int = 0, shard_index: int = 0,
                 shard_count: int = 1, window: int | None = None, timestamps: float = 0.0):
        if batch_size % shard_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {shard_count} processes")
        if not (0 <= shard_index < shard_count):
            raise ValueError(f"shard_index {shard_index} outside 0..{shard_count - 1}")
        self.source, self.tokenizer = source, tokenizer
        self.buckets = tuple(sorted(int(b) for b in buckets))
        self.window = window
        if window is not None and (window <= 0 or window % 2):
            raise ValueError(f"window must be a positive even frame count, got {window}")
        if any(b <= 0 or (b % 2 and window is None) for b in self.buckets):
            raise ValueError(f"buckets must be positive even frame counts, got {self.buckets}")
        self.batch_size, self.seed, self.curriculum_epochs = batch_size, seed, curriculum_epochs
        if not 0.0 <= timestamps <= 1.0:
            raise ValueError(f"timestamps is a probability in [0, 1], got {timestamps}")
        if timestamps and tokenizer.timestamp_begin is None:
            raise ValueError(f"timestamps need a vocabulary with timestamp tokens; the {tokenizer.vocab!r} "
                             f"vocabulary has none")
        self.timestamps = timestamps
        self.shard_index, self.shard_count = shard_index, shard_count
        self.stats = PrepareStats()
        items: list[Item] = []
        for i in range(len(source)):
            meta = source.metadata(i)
            pair = tokenizer.encode_transcript(meta.text, n_text_ctx)
            if pair is None:
                self.stats.too_many_tokens += 1
                continue
            timed = None
            if timestamps and meta.span is not None:
                try:
                    timed = tokenizer.encode_transcript(meta.text, n_text_ctx, span=meta.span)
                except ValueError:  # speech times beyond the last timestamp token (30 s): untimed
                    pass
            if timestamps and timed is None:
                self.stats.untimed += 1
            longest = max(len(pair[0]), len(timed[0]) if timed else 0)
            if window is None:
                frames = frames_of(meta.duration) if meta.duration is not None else self.buckets[-1]
                b = next((k for k, f in enumerate(self.buckets) if frames <= f), None)
            else:  # every row padded to the window; buckets by transcript length
                fits = meta.duration is None or frames_of(meta.duration) <= window
                b = next((k for k, n in enumerate(self.buckets) if longest <= n), None) if fits else None
            if b is None:
                self.stats.too_long += 1
                continue
            items.append(Item(i, b, tuple(pair[0]), tuple(pair[1]), tuple(ctc_encode(meta.text)),
                              (tuple(timed[0]), tuple(timed[1])) if timed else None))
        if not items:
            raise DataError(f"{source.name}: no usable utterances ({self.stats.as_dict()}, source drops "
                             f"{source.stats.as_dict()})")
        self.stats.kept = len(items)
        self.items = items
        self.by_bucket = [[k for k, it in enumerate(items) if it.bucket == b] for b in range(len(self.buckets))]
        self.text_len = [_round_up(max((_longest(items[k]) for k in ks), default=1), 8, n_text_ctx)
                         for ks in self.by_bucket]
        self.ctc_len = _round_up(max(max(len(it.ctc) for it in items), 1), 8)
        self.batches_per_bucket = [math.ceil(len(ks) / batch_size) for ks in self.by_bucket]
        self.steps_per_epoch = sum(self.batches_per_bucket)

    def __len__(self) -> int:
        return len(self.items)

    def groups(self) -> dict[str, str]:
        """``{id: group}`` of the kept items that have a scoring group (``ItemMeta.group``)."""
        metas = (self.source.metadata(it.index) for it in self.items)
        return {m.id: m.group for m in metas if m.group is not None}

    def shapes(self) -> list[tuple[int, int]]:
        """``(frames, text length)`` of every bucket in use: the shapes the train step compiles for."""
        return [(self.frames(b), t) for b, (t, ks) in enumerate(zip(self.text_len, self.by_bucket, strict=True))
                if ks]

    def frames(self, bucket: int) -> int:
        """Mel frames of a bucket's rows: its length, or with a ``window`` the window."""
        return self.buckets[bucket] if self.window is None else self.window

    def epoch(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The batches of ``epoch``: ``(bucket, item positions)`` in step order."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for b, ks in enumerate(self.by_bucket):
            if not ks:
                continue
            order = [ks[j] for j in rng.permutation(len(ks))]
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                chunk += order[: self.batch_size - len(chunk)]  # complete the tail from the same shuffle
                while len(chunk) < self.batch_size:  # a bucket smaller than one batch
                    chunk += order[: self.batch_size - len(chunk)]
                batches.append((b, chunk))
        if epoch < self.curriculum_epochs:  # shortest first; shuffled within a bucket
            return batches
        return [batches[j] for j in rng.permutation(len(batches))]

    def step(self, step: int) -> tuple[int, list[int]]:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        if getattr(self, "_epoch_cache", (None,))[0] != epoch:
            self._epoch_cache = (epoch, self.epoch(epoch))
        bucket, chunk = self._epoch_cache[1][k]
        per = self.batch_size // self.shard_count
        return bucket, chunk[self.shard_index * per:(self.shard_index + 1) * per]

    def eval_batches(self) -> list[tuple[int, list[int | None]]]:
        """Every item exactly once, bucket by bucket in source order; ``None`` marks filler rows of a tail."""
        out = []
        per = self.batch_size // self.shard_count
        for b, ks in enumerate(self.by_bucket):
            for start in range(0, len(ks), self.batch_size):
                chunk: list[int | None] = list(ks[start:start + self.batch_size])
                chunk += [None] * (self.batch_size - len(chunk))
                out.append((b, chunk[self.shard_index * per:(self.shard_index + 1) * per]))
        return out

    def timestamped(self, epoch: int, position: int) -> bool:
        """Whether item ``position`` is trained with timestamps in ``epoch`` (probability ``timestamps``)."""
        item = self.items[position]
        if item.timestamped is None:
            return False
        return self.timestamps >= 1.0 or np.random.default_rng([self.seed, epoch, position]).random() < self.timestamps

    def collate(self, bucket: int, positions: Sequence[int | None], epoch: int | None = None) -> dict:
        """Decode and pad the utterances at ``positions`` (item positions; None = filler) into a batch; a
        training batch gives its ``epoch``, which draws the rows trained with timestamps (evaluation: none)."""
        frames, text_len = self.frames(bucket), self.text_len[bucket]
        n = len(positions)
        batch = {
            "audio": np.zeros((n, frames * HOP_LENGTH), np.float32),
            "n_samples": np.zeros((n,), np.int32),
            "tokens": np.full((n, text_len), self.tokenizer.eot, np.int32),
            "targets": np.full((n, text_len), IGNORE_ID, np.int32),
            "ctc_labels": np.zeros((n, self.ctc_len), np.int32),
            "ctc_paddings": np.ones((n, self.ctc_len), np.float32),
            "valid": np.zeros((n,), bool),
            "id": [""] * n,
            "text": [""] * n,
        }
        for r, pos in enumerate(positions):
            if pos is None:
                continue
            item = self.items[pos]
            record = self.source[item.index]
            if record is None:  # unreadable or too long once decoded: counted by the source, row stays filler
                continue
            audio = record["audio"]
            if audio.shape[0] > frames * HOP_LENGTH:  # metadata duration was wrong; never truncate
                log.warning("%s: %s is %.2f s, longer than its bucket; skipped", self.source.name, record["id"],
                            audio.shape[0] / SAMPLE_RATE)
                continue
            batch["audio"][r, : audio.shape[0]] = audio
            batch["n_samples"][r] = audio.shape[0]
            tokens, targets = item.tokens, item.targets
            if epoch is not None and self.timestamped(epoch, pos):
                tokens, targets = item.timestamped
            batch["tokens"][r, : len(tokens)] = tokens
            batch["targets"][r, : len(targets)] = targets
            batch["ctc_labels"][r, : len(item.ctc)] = item.ctc
            batch["ctc_paddings"][r, : len(item.ctc)] = 0.0
            batch["valid"][r] = True
            batch["id"][r], batch["text"][r] = record["id"], record["text"]
        return batch


def open_splits(tc: TrainConfig, cfg: WhisperConfig) -> dict:
    """The train / validation / test sources of ``tc.dataset``; utterances longer than the window are dropped."""
    kind = tc.dataset.partition(":")[0]
    if kind not in DEFAULT_SPLITS:
        raise ValueError(f"unknown dataset {tc.dataset!r}; expected one of {list(DEFAULT_SPLITS)}")
    names = dict(zip(("train", "validation", "test"), DEFAULT_SPLITS[kind], strict=True))
    names.update({k: v for k, v in (("train", tc.train_split), ("validation", tc.val_split),
                                    ("test", tc.test_split)) if v})
    kw: dict = {}
    if kind == "synthetic":
        kw = dict(n_train=tc.n_train, n_val=tc.n_val, n_test=tc.n_test, seed=tc.corpus_seed, noise=tc.noise,
                  progress=tc.progress)
    elif kind == "gigaspeech" and tc.subset:
        kw = dict(subset=tc.subset)
    max_seconds = cfg.n_frames * HOP_LENGTH / SAMPLE_RATE
    return {split: open_dataset(tc.dataset, name, cache_dir=tc.cache_dir, max_seconds=max_seconds, **kw)
            for split, name in names.items()}


def run_plans(tc: TrainConfig, cfg: WhisperConfig, tokenizer: Tokenizer, sources: dict, *, shard_index: int = 0,
              shard_count: int = 1) -> dict[str, Plan]:
    """A training run's plans, ``train`` / ``validation`` / ``test``: every split bucketed at the training set's
    duration quantiles, evaluation in ``tc.eval_batch_size`` batches. Evaluating a run's checkpoint afterwards
    with these very plans reproduces the run's own scores (padding changes greedy transcripts)."""
    if tc.timestamps and tokenizer.timestamp_begin is None:
        raise RunConfigError(f"--timestamps {tc.timestamps}: the {tokenizer.vocab!r} vocabulary has no timestamp "
                             f"tokens (start from an OpenAI checkpoint with --init-from)")
    window = cfg.n_frames if tc.init_from is not None else None
    if window is None:
        buckets = quantile_buckets(sources["train"].durations(), cfg.n_frames, tc.buckets)
    else:
        buckets = text_buckets(sources["train"], tokenizer, cfg.n_text_ctx, tc.buckets)
    shard = dict(shard_index=shard_index, shard_count=shard_count, window=window)
    plans = {"train": Plan(sources["train"], tokenizer, n_text_ctx=cfg.n_text_ctx, buckets=buckets,
                           batch_size=tc.batch_size, seed=tc.seed, curriculum_epochs=tc.curriculum_epochs,
                           timestamps=tc.timestamps, **shard)}
    if tc.timestamps and plans["train"].stats.untimed == len(plans["train"]):
        raise DataError(f"--timestamps {tc.timestamps}: {sources['train'].name} gives no utterance's speech times "
                        f"(manifest fields speech_start and speech_end, in seconds)")
    # full-window evaluation has one audio shape: one text bucket too, so no bucket ends in a batch of filler rows
    eval_buckets = buckets if window is None else (cfg.n_text_ctx,)
    for s in ("validation", "test"):
        plans[s] = Plan(sources[s], tokenizer, n_text_ctx=cfg.n_text_ctx, buckets=eval_buckets,
                        batch_size=tc.eval_batch_size, **shard)
    return plans


def text_buckets(source: Source, tokenizer: Tokenizer, n_text_ctx: int, n_buckets: int) -> tuple[int, ...]:
    """Decoder lengths at the quantiles of a training set's prompt + transcript lengths (rounded up to 8), the
    last the whole text context: the buckets of a run whose audio is always the full window (a pretrained
    checkpoint's), where only the text side varies."""
    pairs = (tokenizer.encode_transcript(source.metadata(i).text, n_text_ctx) for i in range(len(source)))
    lengths = [len(p[0]) for p in pairs if p is not None]
    qs = np.quantile(np.asarray(lengths, float), [(i + 1) / n_buckets for i in range(n_buckets - 1)]) if lengths else []
    return tuple(sorted({_round_up(int(math.ceil(q)), 8, n_text_ctx) for q in qs} | {n_text_ctx}))


def drop_counts(sources: dict[str, Source], plans: dict[str, Plan]) -> dict[str, dict[str, int]]:
    """Every utterance left out of each split, by reason: the source's drops (empty, garbage, unreadable, longer
    than ``max_seconds``) and the plan's (``too_many_tokens``: a transcript longer than the text context; audio
    longer than the largest bucket, counted in ``too_long``)."""
    out = {}
    for split, src in sources.items():
        d = src.stats.as_dict()
        d["too_long"] += plans[split].stats.too_long
        d["too_many_tokens"] = plans[split].stats.too_many_tokens
        out[split] = d
    return out


def _longest(item: Item) -> int:
    return max(len(item.tokens), len(item.timestamped[0]) if item.timestamped else 0)


def _round_up(n: int, multiple: int, cap: int | None = None) -> int:
    n = -(-n // multiple) * multiple
    return n if cap is None else min(n, cap)


class _TrainBatch:
    """grain map function: step -> batch (a class, not a closure, so worker processes can pickle it)."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def __call__(self, step: int) -> dict:
        return self.plan.collate(*self.plan.step(step), epoch=int(step) // self.plan.steps_per_epoch)


class _EvalBatch:
    def __init__(self, plan: Plan):
        self.plan, self.batches = plan, plan.eval_batches()

    def __call__(self, k: int) -> dict:
        return self.plan.collate(*self.batches[k])


def train_dataset(plan: Plan, total_steps: int):
    """A grain ``MapDataset`` whose element ``s`` is the batch of training step ``s``."""
    import grain

    return grain.MapDataset.range(total_steps).map(_TrainBatch(plan))


def eval_dataset(plan: Plan):
    import grain

    return grain.MapDataset.range(len(plan.eval_batches())).map(_EvalBatch(plan))


def make_iterator(dataset, *, num_threads: int = 2, prefetch: int = 4, num_workers: int = 0):
    """An iterator over ``dataset`` with background decoding: threads, or ``num_workers`` processes.

    The result has ``get_state()`` / ``set_state()`` (a JSON-able position) for exact resume.
    """
    import grain

    it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app nobody parsed them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


def iterate_eval(plan: Plan, **kw) -> Iterator[dict]:
    """All batches of ``plan.eval_batches()`` in order."""
    yield from make_iterator(eval_dataset(plan), **kw)


__all__ = ["ARRAY_KEYS", "HOP_LENGTH", "Item", "Plan", "PrepareStats", "drop_counts", "eval_dataset", "frames_of",
           "iterate_eval", "make_iterator", "open_splits", "quantile_buckets", "text_buckets", "train_dataset"]
