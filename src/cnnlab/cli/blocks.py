"""`cnnlab blocks`: every registered block with its base network's size, beside the
reference report's figures for the same block (parameters, validation and training accuracy,
training time)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("blocks", help="list the registered blocks and their network sizes")
    p.add_argument("--width-multiplier", type=float, default=1.0,
                   help="scale every stage width (default 1.0, the reference-sized network)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.blocks import BLOCKS, REPORT_PARAMS
    from cnnlab.blocks.reference import REPORT_EPOCHS, REPORT_TRAIN_ACC, REPORT_TRAIN_TIME_S, REPORT_VAL_ACC
    from cnnlab.core.errors import CnnlabError
    from cnnlab.models import count_parameters, create_model
    from cnnlab.reports.text import minutes

    if args.width_multiplier <= 0:
        raise CnnlabError(f"--width-multiplier must be > 0, got {args.width_multiplier}")
    # The report's counts are for its full-width network: a difference at another width
    # would only measure the multiplier.
    full_width = args.width_multiplier == 1.0
    def pct(x):
        return "-" if x is None else f"{x:.2%}"

    print(f"{'block':<6} {'alias':<11} {'parameters':>12} {'report':>12} {'difference':>11} "
          f"{'report val':>10} {'report train':>12} {'report time':>11}  description")
    for name in BLOCKS:
        cls = BLOCKS.get(name)
        params = count_parameters(create_model(name, width_multiplier=args.width_multiplier))
        reference = REPORT_PARAMS.get(name)
        report = "-" if reference is None else f"{reference:,}"
        if reference is None or not full_width:
            diff = "-"
        else:
            diff = "0" if params == reference else f"{params - reference:+,}"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        if BLOCKS.is_extra(name):
            doc += " [extra: not in the default comparison]"
        print(f"{name:<6} {'/'.join(BLOCKS.aliases(name)):<11} {params:>12,} {report:>12} {diff:>11} "
              f"{pct(REPORT_VAL_ACC.get(name)):>10} {pct(REPORT_TRAIN_ACC.get(name)):>12} "
              f"{minutes(REPORT_TRAIN_TIME_S.get(name)):>11}  {doc}")
    print(f"report: the reference report's figures, each block trained {REPORT_EPOCHS} epochs (hardware not stated)")
    if not full_width:
        print(f"(width multiplier {args.width_multiplier:g}: the report's counts are for width 1.0)")
    return 0
