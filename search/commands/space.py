"""``search space list|show|sample``: inspect the reference specs and the search space."""

from __future__ import annotations

import argparse
import json
from typing import Any

from search.console import console, print_table
from search.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="inspect reference specs and the search space")
    ssub = p.add_subparsers(dest="space_command", metavar="ACTION", parser_class=type(p))
    ssub.required = True

    q = ssub.add_parser("list", help="the reference specs, with their complexity")
    _size_flags(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_list)

    q = ssub.add_parser("show", help="per-stage table and totals of a spec, or a search space's choices")
    q.add_argument(
        "spec", nargs="?", metavar="NAME|SPEC.json", help="a reference name (ct-l, ct-s) or a spec file"
    )
    q.add_argument(
        "--space",
        metavar="NAME",
        help="instead of a spec: a search space's choices and the params/MACs of random samples",
    )
    q.add_argument("--samples", type=int, default=1000, help="random samples of --space (default 1000)")
    _size_flags(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_show)

    q = ssub.add_parser("sample", help="a random valid spec from a search space")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument(
        "--space", default="prototype", metavar="NAME", help="the search space (default prototype)"
    )
    _size_flags(q)
    q.add_argument("--json", action="store_true", help="print the spec as JSON")
    q.set_defaults(func=run_sample)


def _size_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=512, help="square input size (default 512)")
    p.add_argument("--num-classes", type=int, default=3, help="classes of the head (default 3)")


def check_image_size(size: int) -> int:
    if size < 32 or size % 32:
        raise UsageError(f"--image-size must be a multiple of 32 of at least 32, got {size}")
    return size


def describe(spec: Any, image_size: int, num_classes: int) -> dict[str, Any]:
    """Totals and a per-stage breakdown of ``spec`` at ``image_size``."""
    from evaluators import profile
    from space import build

    if num_classes < 2:
        raise UsageError(f"--num-classes must be at least 2, got {num_classes}")
    model = build(spec, num_classes)
    prof = profile(model, (spec.stem.in_channels, image_size, image_size))
    stages = []
    res = image_size // spec.stem.stride // (2 if spec.stem.pool else 1)
    stem_params = sum(p.numel() for p in model.stem.parameters())
    rows: list[dict[str, Any]] = [
        {
            "stage": "stem",
            "blocks": 1,
            "out_channels": spec.stem.out_channels,
            "resolution": res,
            "params": stem_params,
            "macs": prof.by_module.get("stem", 0),
        }
    ]
    for i, (stage_spec, stage) in enumerate(zip(spec.stages, model.stages, strict=True)):
        for block in stage_spec.blocks:
            res = (res + block.stride - 1) // block.stride
        kinds = sorted({f"{b.conv} {b.kernel_size}x{b.kernel_size}" for b in stage_spec.blocks})
        rows.append(
            {
                "stage": f"s{i + 1}",
                "blocks": len(stage_spec.blocks),
                "out_channels": stage_spec.out_channels,
                "resolution": res,
                "params": sum(p.numel() for p in stage.parameters()),
                "macs": prof.by_module.get(f"stages.{i}", 0),
                "convs": ", ".join(kinds),
                "se_blocks": sum(1 for b in stage_spec.blocks if b.se_channels),
            }
        )
    rows.append(
        {
            "stage": "head",
            "blocks": 1,
            "out_channels": num_classes,
            "resolution": 1,
            "params": sum(p.numel() for p in model.fc.parameters()),
            "macs": prof.by_module.get("fc", 0) + prof.by_module.get("pool", 0),
        }
    )
    stages.extend(rows)
    return {
        "name": spec.name,
        "arch_id": spec.arch_id,
        "image_size": image_size,
        "num_classes": num_classes,
        "params": prof.params,
        "macs": prof.macs,
        "flops": prof.flops,
        "peak_activation_bytes": prof.peak_activation_bytes,
        "unsupported_ops": prof.unsupported_ops,
        "stages": stages,
        "spec": spec.to_dict(),
    }


def _print_description(d: dict[str, Any]) -> None:
    size = f"{d['image_size']}x{d['image_size']}"
    title = f"{d['name'] or 'spec'} (arch_id {d['arch_id']}) at {size}, {d['num_classes']} classes"
    print_table(
        title,
        ["stage", "blocks", "out ch", "res", "params", "MACs", "convs", "SE"],
        [
            [
                r["stage"],
                r["blocks"],
                r["out_channels"],
                r["resolution"],
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:,.1f} M",
                r.get("convs", ""),
                r.get("se_blocks", ""),
            ]
            for r in d["stages"]
        ],
    )
    console().print(
        f"params {d['params']:,}   MACs {d['macs'] / 1e9:.3f} G   FLOPs {d['flops'] / 1e9:.3f} G   "
        f"peak activations {d['peak_activation_bytes'] / 2**20:.1f} MiB   arch_id {d['arch_id']}"
    )


def run_show(args: argparse.Namespace) -> int:
    from space import load_spec

    if args.space:
        if args.spec:
            raise UsageError("give a spec or --space NAME, not both")
        return _show_space(args)
    if not args.spec:
        raise UsageError("give a spec (a reference name such as ct-l, or a spec file) or --space NAME")
    spec = load_spec(args.spec)
    d = describe(spec, check_image_size(args.image_size), args.num_classes)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_description(d)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from space import get_reference, reference_names

    size = check_image_size(args.image_size)
    out = []
    for name in reference_names():
        d = describe(get_reference(name), size, args.num_classes)
        out.append({k: d[k] for k in ("name", "arch_id", "params", "macs", "flops")})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(
            f"reference specs at {size}x{size}, {args.num_classes} classes",
            ["name", "arch_id", "params", "MACs", "FLOPs"],
            [
                [
                    r["name"],
                    r["arch_id"],
                    f"{r['params']:,}",
                    f"{r['macs'] / 1e9:.3f} G",
                    f"{r['flops'] / 1e9:.3f} G",
                ]
                for r in out
            ],
        )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import optuna

    from space import sample

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    spec = sample(study.ask(), args.space)
    if args.json:
        print(spec.to_json())
    else:
        _print_description(describe(spec, check_image_size(args.image_size), args.num_classes))
    return 0


def describe_space(
    name: str, samples: int, image_size: int, num_classes: int, seed: int = 0
) -> dict[str, Any]:
    """A space's choices and the distribution of params and MACs over ``samples`` random specs
    (counted from the specs, ``evaluators.complexity.spec_complexity``), beside CT L's and CT S's."""
    import numpy as np
    import optuna

    from evaluators.complexity import spec_complexity
    from space import contains, get_reference
    from space.sampler import get_space, sample

    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    space = get_space(name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    counts = []
    for _ in range(samples):
        trial = study.ask()
        counts.append(spec_complexity(sample(trial, space), image_size, num_classes))
        study.tell(trial, 0.0)
    params, macs = (np.array(v, dtype=float) for v in zip(*counts))
    refs = {}
    for ref in ("ct-l", "ct-s"):
        spec = get_reference(ref)
        p, m = spec_complexity(spec, image_size, num_classes)
        refs[ref] = {"params": p, "macs": m, "inside": contains(spec, space)}
    quantiles = (0, 5, 25, 50, 75, 95, 100)

    def dist(v: Any) -> dict[str, float]:
        return {f"p{q}": float(x) for q, x in zip(quantiles, np.percentile(v, quantiles))}

    return {
        "space": space.name,
        "description": space.description,
        "choices": space.choices(),
        "samples": samples,
        "image_size": image_size,
        "num_classes": num_classes,
        "params": dist(params),
        "macs": dist(macs),
        "references": refs,
        "below_ct_l": {
            "macs": float(np.mean(macs < refs["ct-l"]["macs"])),
            "params": float(np.mean(params < refs["ct-l"]["params"])),
        },
    }


def _show_space(args: argparse.Namespace) -> int:
    size = check_image_size(args.image_size)
    d = describe_space(args.space, args.samples, size, args.num_classes)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    con = console()
    con.print(f"search space {d['space']!r}: {d['description']}")
    print_table("choices", ["parameter", "values"], [[r["label"], r["values"]] for r in d["choices"]])
    rows = [
        [what, *(fmt(d[what][f"p{q}"]) for q in (0, 5, 25, 50, 75, 95, 100))]
        for what, fmt in (("params", lambda v: f"{v / 1e6:.3f} M"), ("macs", lambda v: f"{v / 1e9:.3f} G"))
    ]
    print_table(
        f"{d['samples']} random samples at {size}x{size}x3, {d['num_classes']} classes",
        ["", "min", "5 %", "25 %", "median", "75 %", "95 %", "max"],
        rows,
    )
    for ref, r in d["references"].items():
        where = "inside" if r["inside"] else "outside"
        con.print(f"{ref}: {r['params'] / 1e6:.3f} M params, {r['macs'] / 1e9:.3f} G MACs, {where} the space")
    b = d["below_ct_l"]
    con.print(f"samples below CT L: {100 * b['macs']:.1f} % in MACs, {100 * b['params']:.1f} % in params")
    return 0
