"""`moodtag synth`: generate the synthetic mood corpus (audio, split TSVs, tags, generative parameters).

Exit status: 0 when the corpus is complete (a rerun after a kill finishes it), 2 on a usage error.
"""
from __future__ import annotations

from . import add_command


def register(subparsers) -> None:
    from ..synth.corpus import FORMATS, PRESETS

    parser = add_command(subparsers, "synth", help="generate the synthetic mood corpus (the default data set)", run=run)
    parser.add_argument("--out", required=True, metavar="DIR", help="corpus folder (created; a rerun resumes)")
    parser.add_argument("--preset", default="demo", choices=tuple(PRESETS),
                        help="size and durations: "
                             + ", ".join(f"{name} ({p.n_labelled} labelled + {p.n_unlabelled} unlabelled)"
                                         for name, p in PRESETS.items()) + "; default: demo")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default: 0)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="processes rendering audio (default: 1)")
    parser.add_argument("--labelled", type=int, metavar="N", help="labelled tracks (default: the preset's)")
    parser.add_argument("--unlabelled", type=int, metavar="N", help="unlabelled tracks (default: the preset's)")
    parser.add_argument("--format", default="ogg", choices=tuple(FORMATS), help="audio format (default: ogg)")
    parser.add_argument("--miss-rate", type=float, default=0.12, metavar="P",
                        help="label noise: probability that a true tag is missing (default: 0.12)")
    parser.add_argument("--false-rate", type=float, default=0.01, metavar="P",
                        help="label noise: probability that an absent tag is added (default: 0.01)")


def run(args) -> int:
    from ..synth import generate_corpus

    info = generate_corpus(
        args.out, preset=args.preset, seed=args.seed, workers=args.workers, n_labelled=args.labelled,
        n_unlabelled=args.unlabelled, audio_format=args.format, miss_rate=args.miss_rate,
        false_rate=args.false_rate, quiet=args.quiet,
    )
    sizes = ", ".join(f"{split} {count}" for split, count in info.split_sizes.items())
    print(f"moodtag synth: {info.out_dir}: {sum(info.split_sizes.values())} tracks ({sizes}), {info.hours:.2f} h; "
          f"rendered {info.rendered}, already present {info.already_present}")
    return 0
