"""The ``rankwise`` command line: ``inspect``, ``merge``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .adapter import expand_paths, open_adapters
from .demo import run_demo
from .errors import RankwiseError
from .merging import merge, merge_methods
from .pool import AdapterPool
from .threads import set_num_threads


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _fmt_params(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def cmd_inspect(args: argparse.Namespace) -> int:
    folders = expand_paths(args.adapters)
    adapters = open_adapters(folders, check_finite=not args.fast)
    for adapter in adapters:
        print(
            f"{adapter.path}  ({len(adapter.modules)} modules, {_fmt_params(adapter.num_params)} params, "
            f"{adapter.config.get('base_model_name_or_path') or 'base model not named'})"
        )
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for m in adapter.modules.values():
            label = m.name if args.all else m.name.rsplit(".", 1)[-1]
            groups.setdefault((label, m.rank, m.alpha, m.scaling, m.d_out, m.d_in, m.dtype), []).append(m)
        rows = [
            [
                label,
                len(ms),
                r,
                _fmt_num(alpha),
                _fmt_num(round(s, 6)),
                f"{o}×{i}",
                dt,
                _fmt_params(sum(x.num_params for x in ms)),
            ]
            for (label, r, alpha, s, o, i, dt), ms in groups.items()
        ]
        print(_table(rows, ["module", "count", "rank", "alpha", "scaling", "out×in", "dtype", "params"]))
        print()
    return 0


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RankwiseError(f"--option takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    on_ray = args.ray is not None
    pool = AdapterPool.load(args.adapters, check_finite=not on_ray)  # Ray workers check their modules
    t_load = time.perf_counter() - t0
    options = _parse_options(args.option or [])
    if on_ray:
        options["executor"] = "ray"
        options["ray_address"] = args.ray or None
    if args.rank is not None:
        options["rank"] = args.rank
    if args.seed is not None:
        options["seed"] = args.seed
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    merged = merge(pool, args.method, weights=weights, dtype=args.dtype, progress=not args.quiet, **options)
    t_merge = time.perf_counter() - t0 - t_load
    out = merged.save(args.output, overwrite=args.overwrite)
    total = time.perf_counter() - t0
    ranks = sorted({m.rank for m in merged.modules.values()})
    src_ranks = sorted({m.rank for a in pool for m in a.modules.values()})
    print(
        f"merged {len(pool)} adapters ({len(pool.modules)} modules, source ranks {src_ranks}) "
        f"with {args.method} -> rank {ranks[0] if len(ranks) == 1 else ranks}, {merged.dtype}\n"
        f"wrote {out}\n"
        f"time: {total:.2f}s (load {t_load:.2f}s, merge {t_merge:.2f}s, write {total - t_load - t_merge:.2f}s)"
    )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    print("\n".join(f"{k:22s} {v}" for k, v in merge_methods().items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(n_adapters=args.n, out=args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankwise", description="Every rank of a LoRA is a building block.")
    p.add_argument("--version", action="version", version=f"rankwise {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--threads", type=int, default=None, help="threads for the Rust core (default: all cores)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="describe PEFT LoRA adapter folders")
    s.add_argument("adapters", nargs="+", help="adapter folders or globs")
    s.add_argument("--all", action="store_true", help="one row per module instead of per projection")
    s.add_argument("--fast", action="store_true", help="skip the NaN/Inf scan of the weights")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("merge", help="merge adapter folders into one PEFT adapter")
    s.add_argument("adapters", nargs="+", help="adapter folders or globs")
    s.add_argument("-o", "--output", required=True, help="output folder (created atomically)")
    s.add_argument("--method", default="lego", help="merge method (default lego); see `rankwise methods`")
    s.add_argument("--rank", type=int, default=None, help="rank k of the merged adapter (lego)")
    s.add_argument("--weights", default=None, help="comma-separated per-adapter weights")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--dtype", default=None, help="output dtype (default: the inputs')")
    s.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. density=0.5")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="merge the modules as Ray tasks, on the cluster at ADDRESS ('auto': the running one) "
        "or on a local one (pip install 'rankwise[ray]'; workers read the adapters by path)",
    )
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("methods", help="list the merge methods")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("demo", help="make a small pool with numpy, merge it with LEGO, explain")
    s.add_argument("-n", type=int, default=12, help="number of adapters (default 12)")
    s.add_argument("-o", "--output", default=None, help="keep the merged adapter here")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except (RankwiseError, OSError) as e:
        if args.debug:
            raise
        print(f"rankwise: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rankwise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
