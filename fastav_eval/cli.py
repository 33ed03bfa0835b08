"""``fastav-eval`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fastav_eval.plots import plot_tokens_per_layer
from fastav_eval.pruning.config import FINE_RULES
from fastav_eval.pruning.flops import CONVENTIONS
from fastav_eval.pruning.presets import PRESETS, get_preset


def _flops(args: argparse.Namespace) -> int:
    result = get_preset(args.preset).run(
        fine_ratio=args.fine_ratio, fine_rule=args.fine_rule, convention=args.convention
    )
    if args.plot:
        title = f"{args.preset}: FastAV, P = {args.fine_ratio:g}, {result['relative_flops']:.1f}% FLOPs"
        result["plot"] = str(plot_tokens_per_layer(result["kept_per_layer"], title, args.plot))
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastav-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser(
        "flops",
        help="relative prefill FLOPs of FastAV on a paper's model and layout (prints one JSON object)",
    )
    flops.add_argument("--preset", required=True, choices=sorted(PRESETS))
    flops.add_argument("--fine-ratio", type=float, default=0.2, help="fine-stage ratio P in [0, 1) (default 0.2)")
    flops.add_argument("--fine-rule", choices=FINE_RULES, default="low_attentive")
    flops.add_argument("--convention", choices=CONVENTIONS, default="fastv")
    flops.add_argument("--compact", action="store_true", help="print the JSON on one line")
    flops.add_argument("--plot", metavar="PNG", help="also draw the tokens each layer processed, per modality")
    flops.set_defaults(handler=_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"fastav-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
