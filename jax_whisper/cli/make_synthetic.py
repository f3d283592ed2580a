"""Build (or reuse) the synthetic eSpeak corpus and print a summary.

Without ``--out`` the corpus goes to the parameter-keyed cache (``$JAX_WHISPER_CACHE/synthetic/...``,
default ``~/.cache/jax_whisper/synthetic/...``) and is reused when it already exists there.
"""

from __future__ import annotations

import argparse
import time

from jax_whisper import synthetic


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="build into this directory instead of the cache")
    ap.add_argument("--overwrite", action="store_true", help="with --out: replace an existing corpus")
    ap.add_argument(
        "--cache-dir",
        help="directory holding cached corpora (default: %(default)s)",
        default=str(synthetic.default_cache_dir()),
    )
    d = synthetic.CORPUS_DEFAULTS
    ap.add_argument("--n-train", type=int, default=d["n_train"], help="default %(default)s")
    ap.add_argument("--n-val", type=int, default=d["n_val"], help="default %(default)s")
    ap.add_argument("--n-test", type=int, default=d["n_test"], help="default %(default)s")
    ap.add_argument("--seed", type=int, default=d["seed"], help="default %(default)s")
    ap.add_argument(
        "--noise",
        type=float,
        default=d["noise"],
        metavar="FRACTION",
        help="fraction of utterances with additive white/pink noise (default %(default)s)",
    )
    ap.add_argument(
        "--snr-db",
        type=float,
        nargs=2,
        default=d["snr_db"],
        metavar=("LOW", "HIGH"),
        help="SNR range of the noise in dB (default %(default)s)",
    )
    ap.add_argument("--min-words", type=int, default=d["min_words"], help="default %(default)s")
    ap.add_argument("--max-words", type=int, default=d["max_words"], help="default %(default)s")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: usable CPU cores)")
    args = ap.parse_args(argv)

    params = dict(
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        noise=args.noise,
        snr_db=tuple(args.snr_db),
        min_words=args.min_words,
        max_words=args.max_words,
    )
    t0 = time.perf_counter()
    if args.out:
        manifests = synthetic.build_corpus(
            args.out, workers=args.workers, overwrite=args.overwrite, progress=True, **params
        )
    else:
        manifests = synthetic.ensure_corpus(args.cache_dir, workers=args.workers, progress=True, **params)
    seconds = time.perf_counter() - t0
    root = manifests["train"].parent
    info = synthetic.corpus_info(root)
    print(f"corpus: {root}")
    for split in synthetic.SPLITS:
        print(
            f"  {split:10s} {info['counts'][split]:6d} utterances  {info['hours'][split]:.3f} h  "
            f"mean {info['mean_duration'][split]:.2f} s  voices {len(info['voices'][split])}  "
            f"-> {manifests[split]}"
        )
    total_h = sum(info["hours"].values())
    print(
        f"  total {sum(info['counts'].values())} utterances, {total_h:.3f} h, "
        f"{info['distinct_train_words']} distinct words in train, "
        f"{info['dropped_too_long']} redrawn (too long)"
    )
    print(
        f"  built in {info['build_seconds']:.1f} s ({info['utterances_per_second']:.0f} utterances/s, "
        f"{info['workers']} workers); this call took {seconds:.1f} s"
    )
    return 0


