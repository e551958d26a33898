"""`moodtag export`: turn a training run or an ensemble into a self-contained model bundle for `moodtag tag`."""
from __future__ import annotations

from . import add_command


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", help="write a tagger bundle from a training run or an ensemble", run=run)
    parser.add_argument("source", metavar="RUN",
                        help="training run directory (run.json) or ensemble directory (members.json + alpha.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (replaced if a bundle)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write model.onnx (over features) and model-audio.onnx (mel front end inside)")


def run(args) -> int:
    from ..bundle import export, load_bundle

    out = export(args.source, args.out, onnx=args.onnx, quiet=args.quiet)
    bundle = load_bundle(out)
    members = ", ".join(f"{m.name} ({m.mode}, {m.steps} steps)" for m in bundle.members)
    validation = bundle.metrics.get("validation", {})
    scores = "  ".join(f"{key} {validation[key]:.4f}" for key in ("roc_auc_macro", "pr_auc_macro", "f1_macro")
                       if validation.get(key) is not None)
    alpha = f", alpha {bundle.alpha:.2f}" if bundle.alpha is not None else ""
    data = "; trained on the synthetic corpus (tags of generated music only)" if bundle.synthetic else ""
    print(f"moodtag export: {out}: {members}{alpha}; {len(bundle.tags)} tags; validation {scores}{data}")
    return 0
