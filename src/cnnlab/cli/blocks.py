"""`cnnlab blocks`: every registered block with its base network's size."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("blocks", help="list the registered blocks and their network sizes")
    p.add_argument("--width-multiplier", type=float, default=1.0,
                   help="scale every stage width (default 1.0, the reference-sized network)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cnnlab.blocks import BLOCKS
    from cnnlab.errors import CnnlabError
    from cnnlab.models import count_parameters, create_model

    if args.width_multiplier <= 0:
        raise CnnlabError(f"--width-multiplier must be > 0, got {args.width_multiplier}")
    print(f"{'block':<6} {'alias':<11} {'parameters':>12}  description")
    for name in BLOCKS:
        cls = BLOCKS.get(name)
        model = create_model(name, width_multiplier=args.width_multiplier)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<6} {'/'.join(BLOCKS.aliases(name)):<11} {count_parameters(model):>12,}  {doc}")
    return 0
