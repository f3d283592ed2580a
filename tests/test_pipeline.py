"""The input pipeline (jax_whisper.pipeline): bucketing, per-epoch shuffles, curriculum, sharding, evaluation batches,
collation, drops, and the grain iterator's checkpointable state. Runs on an in-memory source (no files)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from jax_whisper.datasets import SAMPLE_RATE, ItemMeta, Source
from jax_whisper.pipeline import (
    HOP_LENGTH,
    Plan,
    drop_counts,
    eval_dataset,
    frames_of,
    make_iterator,
    quantile_buckets,
    train_dataset,
)
from jax_whisper.tokenizer import CTC_CHARS, IGNORE_ID, ctc_decode, ctc_encode, get_tokenizer

TOK = get_tokenizer("seed")
WORDS = "the red fox jumps over a lazy dog near river bank today".split()


def make_source(n=37, seed=0, unreadable=(), long_text=(), max_seconds=5.0, timed=False):
    """``n`` utterances of 0.3-4.5 s; their audio is a ramp encoding the index, so batches can be checked. With
    ``timed`` three in four have speech times."""
    rng = np.random.default_rng(seed)
    metas, refs = [], []
    for i in range(n):
        dur = float(rng.uniform(0.3, 4.5))
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8))))
        if i in long_text:
            text = " ".join(["hippopotamus"] * 40)  # far more than 64 tokens
        span = (0.1, dur - 0.05) if timed and i % 4 else None
        metas.append(ItemMeta(id=f"u{i}", text=text, duration=dur, span=span))
        refs.append(i)

    def load(i):
        if i in unreadable:
            raise OSError(f"cannot decode item {i}")
        return np.full(int(metas[i].duration * SAMPLE_RATE), i + 1, np.float32)

    return Source("mem", metas, refs, load, max_seconds=max_seconds)


def plan_for(src, **kw):
    kw.setdefault("buckets", quantile_buckets(src.durations(), 500, 4))
    kw.setdefault("batch_size", 4)
    return Plan(src, TOK, n_text_ctx=64, **kw)


def test_frames_and_quantile_buckets():
    assert frames_of(1.0) == 100 and frames_of(1.005) == 102  # rounded up to even
    src = make_source(200)
    b = quantile_buckets(src.durations(), 500, 4)
    assert len(b) == 4 and all(x % 16 == 0 for x in b[:-1]) and b == tuple(sorted(b)) and b[-1] == 500
    frames = [frames_of(d) for d in src.durations()]
    assert max(frames) <= b[-1]
    counts = collections.Counter(next(k for k, f in enumerate(b) if x <= f) for x in frames)
    assert all(30 <= c <= 70 for c in counts.values()), counts  # about a quarter each


def test_every_utterance_every_epoch_full_batches_deterministic():
    src = make_source(37)
    plan = plan_for(src, seed=3)
    for epoch in range(3):
        batches = plan.epoch(epoch)
        assert len(batches) == plan.steps_per_epoch
        seen = collections.Counter()
        for bucket, chunk in batches:
            assert len(chunk) == 4
            assert all(plan.items[k].bucket == bucket for k in chunk)
            seen.update(chunk)
        assert set(seen) == set(range(len(plan)))  # nothing dropped
        assert sum(seen.values()) - len(plan) < 4 * len(plan.buckets)  # only bucket tails repeat
    assert plan.epoch(1) == plan_for(src, seed=3).epoch(1)  # a function of (seed, epoch)
    assert plan.epoch(1) != plan.epoch(2) and plan.epoch(1) != plan_for(src, seed=4).epoch(1)


def test_curriculum_orders_buckets_short_first():
    plan = plan_for(make_source(60), curriculum_epochs=1, seed=1)
    order = [b for b, _ in plan.epoch(0)]
    assert order == sorted(order)
    assert [b for b, _ in plan.epoch(1)] != sorted(b for b, _ in plan.epoch(1))  # shuffled afterwards


def test_process_shards_partition_each_global_batch():
    src = make_source(50)
    full = plan_for(src, batch_size=8, seed=2)
    shards = [plan_for(src, batch_size=8, seed=2, shard_index=i, shard_count=2) for i in range(2)]
    for step in range(full.steps_per_epoch + 3):  # crosses into the next epoch
        b, chunk = full.step(step)
        parts = [s.step(step) for s in shards]
        assert all(pb == b for pb, _ in parts)
        assert parts[0][1] + parts[1][1] == chunk
    with pytest.raises(ValueError, match="not divisible"):
        plan_for(src, batch_size=7, shard_count=2)


def test_eval_batches_cover_each_item_once():
    plan = plan_for(make_source(37), batch_size=8)
    chunks = plan.eval_batches()
    flat = [k for _, c in chunks for k in c if k is not None]
    assert sorted(flat) == list(range(len(plan)))
    assert all(len(c) == 8 for _, c in chunks)


def test_drops_are_counted_never_truncated():
    src = make_source(20, long_text={3, 7}, max_seconds=None)
    plan = plan_for(src, buckets=(200, 300))  # utterances over 3 s have no bucket
    too_long = sum(frames_of(d) > 300 for i, d in enumerate(src.durations()) if i not in (3, 7))
    assert plan.stats.too_many_tokens == 2 and plan.stats.too_long == too_long
    assert plan.stats.kept == len(plan) == 20 - 2 - too_long
    # results.json's "dropped": the plan's drops beside the source's (its own too_long is 0 without max_seconds)
    src.stats.unreadable = 1
    assert drop_counts({"train": src}, {"train": plan}) == {
        "train": {"too_long": too_long, "empty": 0, "garbage": 0, "unreadable": 1, "too_many_tokens": 2}}


def test_collate_pads_audio_tokens_and_ctc_labels():
    src = make_source(12)
    plan = plan_for(src)
    positions = [k for k, it in enumerate(plan.items) if it.bucket == plan.items[0].bucket][:3] + [None]
    batch = plan.collate(plan.items[0].bucket, positions)
    frames, text_len = plan.buckets[plan.items[0].bucket], plan.text_len[plan.items[0].bucket]
    assert batch["audio"].shape == (4, frames * HOP_LENGTH) and batch["tokens"].shape == (4, text_len)
    for r, pos in enumerate(positions[:3]):
        item = plan.items[pos]
        meta = src.metadata(item.index)
        n = int(meta.duration * SAMPLE_RATE)
        assert batch["n_samples"][r] == n and np.all(batch["audio"][r, :n] == item.index + 1)
        assert np.all(batch["audio"][r, n:] == 0)
        tokens, targets = TOK.encode_transcript(meta.text, 64)
        assert list(batch["tokens"][r, : len(tokens)]) == tokens and np.all(batch["tokens"][r, len(tokens):] == TOK.eot)
        assert list(batch["targets"][r, : len(targets)]) == targets
        assert np.all(batch["targets"][r, len(targets):] == IGNORE_ID)
        n_chr = int((batch["ctc_paddings"][r] == 0).sum())
        assert "".join(CTC_CHARS[i] for i in batch["ctc_labels"][r, :n_chr]) == meta.text
        assert batch["valid"][r] and batch["text"][r] == meta.text and batch["id"][r] == meta.id
    assert not batch["valid"][3] and np.all(batch["targets"][3] == IGNORE_ID) and batch["ctc_paddings"][3].all()


def test_unreadable_item_becomes_a_counted_filler_row():
    src = make_source(12, unreadable={5})
    plan = plan_for(src)
    pos = next(k for k, it in enumerate(plan.items) if it.index == 5)
    batch = plan.collate(plan.items[pos].bucket, [pos])
    assert not batch["valid"][0] and np.all(batch["targets"][0] == IGNORE_ID)
    assert src.stats.unreadable == 1


def test_ctc_encode_round_trip():
    assert "".join(CTC_CHARS[i] for i in ctc_encode("Hello,  World's 2nd!")) == "hello world's 2nd"
    assert ctc_decode([9, 6, 13, 0, 13, 13, 16]) == "hello"  # h e l _ l l o: a blank keeps the double l
    assert ctc_decode([3, 3, 0, 3, 1, 1, 4]) == "bb c"  # repeats merge unless a blank separates them


@pytest.mark.parametrize("num_workers", [0, 1])
def test_iterator_state_resumes_exactly(num_workers):
    plan = plan_for(make_source(30), seed=5)
    steps = plan.steps_per_epoch + 4
    it = make_iterator(train_dataset(plan, steps), num_workers=num_workers)
    for _ in range(5):
        next(it)
    state = it.get_state()
    rest = [b["id"] for b in it]
    it2 = make_iterator(train_dataset(plan, steps), num_workers=num_workers)
    it2.set_state(state)
    assert [b["id"] for b in it2] == rest and len(rest) == steps - 5
    # and element s is the batch of plan.step(s)
    b, chunk = plan.step(6)
    assert train_dataset(plan, steps)[6]["id"] == [src_id(plan, k) for k in chunk]


def src_id(plan, k):
    return plan.source.metadata(plan.items[k].index).id


def test_eval_dataset_matches_plan():
    plan = plan_for(make_source(10), batch_size=4)
    ds = eval_dataset(plan)
    ids = [i for k in range(len(ds)) for i, v in zip(ds[k]["id"], ds[k]["valid"], strict=True) if v]
    assert sorted(ids) == sorted(f"u{i}" for i in range(10))


def test_timestamps_are_drawn_per_epoch_with_probability_p():
    """With ``timestamps=p`` an item with speech times is trained in the timestamped form with probability p, drawn
    anew each epoch from (seed, epoch, item) (so resumes and processes agree); items without times never are; the
    text length of a bucket holds the longer form."""
    en = get_tokenizer("tiny.en")
    src = make_source(120, timed=True)
    plan = Plan(src, en, n_text_ctx=448, buckets=(16, 24, 448), batch_size=4, window=3000, timestamps=0.5)
    assert plan.stats.untimed == 30 and plan.stats.kept == 120
    for b, ks in enumerate(plan.by_bucket):
        assert all(len(plan.items[k].timestamped[0] if plan.items[k].timestamped else plan.items[k].tokens)
                   <= plan.text_len[b] for k in ks)
    drawn = np.array([[plan.timestamped(e, k) for k in range(len(plan))] for e in range(8)])
    timed = np.array([it.timestamped is not None for it in plan.items])
    assert not drawn[:, ~timed].any()
    assert abs(drawn[:, timed].mean() - 0.5) < 0.06  # 720 draws: 4.4 standard deviations
    assert (drawn[0] != drawn[1]).any()  # a new draw each epoch
    assert (drawn == [[plan.timestamped(e, k) for k in range(len(plan))] for e in range(8)]).all()
    # a training batch carries the drawn form, an evaluation batch never does
    step = next(s for s in range(plan.steps_per_epoch)
                if any(drawn[0][k] for k in plan.step(s)[1]) and not all(drawn[0][k] for k in plan.step(s)[1]))
    bucket, chunk = plan.step(step)
    batch = train_dataset(plan, plan.steps_per_epoch)[step]
    for r, k in enumerate(chunk):
        item = plan.items[k]
        tokens, targets = item.timestamped if drawn[0][k] else (item.tokens, item.targets)
        assert list(batch["tokens"][r, : len(tokens)]) == list(tokens)
        assert list(batch["targets"][r, : len(targets)]) == list(targets)
        assert (en.no_timestamps in tokens) != bool(drawn[0][k])
    assert en.no_timestamps in plan.collate(bucket, chunk)["tokens"][:, 1]


def test_timestamps_need_timestamp_tokens_and_a_probability():
    with pytest.raises(ValueError, match="'seed' vocabulary has none"):
        plan_for(make_source(8), timestamps=0.5)
    with pytest.raises(ValueError, match="probability"):
        Plan(make_source(8), get_tokenizer("tiny.en"), n_text_ctx=448, buckets=(448,), batch_size=4, window=3000,
             timestamps=1.5)
