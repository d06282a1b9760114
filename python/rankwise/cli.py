"""The ``rankwise`` command line: ``inspect``, ``merge``, ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._atomic import check_target
from .adapter import expand_paths, open_adapters
from .demo import run_demo
from .errors import OptionError, RankwiseError
from .merging import merge, merge_methods
from .methods import METHODS
from .methods.weighting import RULE, describe
from .pool import AdapterPool
from .threads import set_num_threads


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def _safe(x: object) -> str:
    """Text from a file (tensor keys, paths) with control characters escaped as repr does, so
    that no terminal escape sequence reaches the terminal raw."""
    s = str(x)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


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
            f"{_safe(adapter.path)}  ({len(adapter.modules)} modules, {_fmt_params(adapter.num_params)} params, "
            f"{_safe(adapter.config.get('base_model_name_or_path') or 'base model not named')})"
        )
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for m in adapter.modules.values():
            label = _safe(m.name if args.all else m.name.rsplit(".", 1)[-1])
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
        if not sep or not key:
            raise OptionError(f"--option takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except (ValueError, RecursionError):
            out[key] = value
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    options = _parse_options(args.option or [])
    if args.rank is not None:
        options["rank"] = args.rank
    if args.seed is not None:
        options["seed"] = args.seed
    weights = _parse_weights(args.weights, "--weights")
    peft_weights = _parse_weights(args.peft_weights, "--peft-weights")
    folders = expand_paths(args.adapters)
    # Before any work: an output that is (or holds, or lies in) an input would destroy it.
    check_target(args.output, overwrite=args.overwrite, inputs=folders)
    pool = AdapterPool.load(folders)
    t_load = time.perf_counter() - t0
    merged = merge(
        pool,
        args.method,
        weights=weights,
        peft_weights=peft_weights,
        dtype=args.dtype,
        progress=not args.quiet,
        **options,
    )
    t_merge = time.perf_counter() - t0 - t_load
    out = merged.save(args.output, overwrite=args.overwrite)
    total = time.perf_counter() - t0
    ranks = sorted({m.rank for m in merged.modules.values()})
    src_ranks = sorted({m.rank for a in pool for m in a.modules.values()})
    print(
        f"merged {len(pool)} adapters ({len(pool.modules)} modules, source ranks {src_ranks}) "
        f"with {args.method} -> rank {ranks[0] if len(ranks) == 1 else ranks}, {merged.dtype}\n"
        f"{_target_line(merged.merge_info or {})}\n"
        f"wrote {out}\n"
        f"time: {total:.2f}s (load {t_load:.2f}s, merge {t_merge:.2f}s, write {total - t_load - t_merge:.2f}s)"
    )
    return 0


def _parse_weights(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise OptionError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _fmt_weights(w: Sequence[float]) -> str:
    if len(set(w)) == 1:
        return f"{w[0]:.6g} for each of the {len(w)}"
    shown = ", ".join(f"{x:.6g}" for x in w[:8])
    return f"[{shown}{', ...' if len(w) > 8 else ''}]"


def _target_line(info: dict[str, Any]) -> str:
    """The weights rule as this merge applied it (methods/weighting.py)."""
    w, p = info.get("weights"), info.get("peft_weights")
    rule = "Σ w_j ΔW_j with w = " + (_fmt_weights(w) if w is not None else "none (PEFT's scale cancels on copies)")
    if p is not None and (w is None or any(abs(x - y) > 1e-12 * max(abs(x), abs(y)) for x, y in zip(p, w))):
        return f"target: {rule} (PEFT's {info['method']} run with weights {_fmt_weights(p)})"
    return f"target: {rule}"


def cmd_methods(args: argparse.Namespace) -> int:
    print(f"{RULE}.\nPEFT's add_weighted_adapter weights: --peft-weights (rw.merge(..., peft_weights=...)).\n")
    for k, v in merge_methods().items():
        print(f"{k:22s} {v}\n{'':22s} weights: {describe(METHODS[k].peft_factor)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(n_adapters=args.n, out=args.output)
    return 0


def _count(text: str) -> int:
    """argparse type: an int >= 0 (a usage error, exit 2, otherwise)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {n}")
    return n


def _positive(text: str) -> int:
    n = _count(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankwise", description="Every rank of a LoRA is a building block.")
    p.add_argument("--version", action="version", version=f"rankwise {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--threads", type=_count, default=None, help="threads for the Rust core (default: all cores)")
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
    s.add_argument("--rank", type=_positive, default=None, help="rank k of the merged adapter (lego)")
    s.add_argument(
        "--weights",
        default=None,
        help="comma-separated per-adapter task-arithmetic coefficients: the target is Σ w_j ΔW_j (default 1/N each)",
    )
    s.add_argument(
        "--peft-weights",
        default=None,
        help="instead of --weights: the weights PEFT's add_weighted_adapter would get (PEFT's numerics)",
    )
    s.add_argument("--seed", type=_count, default=None)
    s.add_argument("--dtype", default=None, help="output dtype (default: the inputs')")
    s.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. density=0.5")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("methods", help="list the merge methods")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("demo", help="make a small pool with numpy, merge it with LEGO, explain")
    s.add_argument("-n", type=_positive, default=12, help="number of adapters (default 12)")
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
        print(f"rankwise: error: {_safe(e)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        # Not a rankwise error: a bug or an input no check caught. One line, and how to see more.
        if args.debug:
            raise
        print(f"rankwise: error: {type(e).__name__}: {_safe(e)} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rankwise: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
