"""The ``rankwise`` command line: ``inspect``, ``merge``, ``analyze``, ``compare``, ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from . import recipe as _recipe
from ._atomic import check_file_target, check_target
from .adapter import Adapter, expand_paths, open_adapters
from .analyze import analyze
from .compare import compare, table
from .demo import run_demo
from .errors import OptionError, RankwiseError
from .formats import FORMATS
from .memory import memory_limit
from .merging import merge, merge_methods
from .methods import METHODS
from .methods.weighting import RULE, describe
from .pool import AdapterPool
from .report import write_analysis, write_compare
from .retention import summary as retention_summary
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


def _labels(names: Sequence[str], full: bool) -> dict[str, str]:
    """Row labels: the short name (``q_proj``), unless modules of different kinds share it
    (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``): then the full name, layer indices as ``*``."""
    if full:
        return {n: n for n in names}
    kinds: dict[str, set[str]] = {}
    for n in names:
        kinds.setdefault(n.rsplit(".", 1)[-1], set()).add(re.sub(r"\.\d+\.", ".*.", n))
    return {
        n: n.rsplit(".", 1)[-1] if len(kinds[n.rsplit(".", 1)[-1]]) == 1 else re.sub(r"\.\d+\.", ".*.", n)
        for n in names
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    """Every folder is reported; one that fails is shown with its error and the exit code is 1."""
    failed = 0
    for folder in expand_paths(args.adapters):
        try:
            (adapter,) = open_adapters([folder], check_finite=not args.fast, format=args.format)
        except RankwiseError as e:
            print(f"{_safe(folder)}  FAILED: {_safe(e)}\n")
            print(f"rankwise: error: {_safe(e)}", file=sys.stderr)
            failed += 1
            continue
        _print_adapter(adapter, args.all)
    if failed:
        print(f"rankwise: {failed} adapter folder(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _print_adapter(adapter: Adapter, full: bool) -> None:
    print(
        f"{_safe(adapter.path)}  ({adapter.format} layout, {len(adapter.modules)} modules, "
        f"{_fmt_params(adapter.num_params)} params, "
        f"{_safe(adapter.config.get('base_model_name_or_path') or 'base model not named')})"
    )
    groups: dict[tuple[Any, ...], list[Any]] = {}
    labels = _labels(list(adapter.modules), full)
    for m in adapter.modules.values():
        label = _safe(labels[m.name]) + (" (embedding)" if m.embedding else "")
        # conv LoRA: out × in × kh × kw
        shape = f"{m.d_out}×{m.d_in}" if m.kernel is None else f"{m.d_out}×{m.d_in // (m.kernel[0] * m.kernel[1])}"
        shape += "".join(f"×{k}" for k in m.kernel or ())
        groups.setdefault((label, m.rank, m.alpha, m.scaling, shape, m.dtype), []).append(m)
    rows = [
        [
            label,
            len(ms),
            r,
            _fmt_num(alpha),
            _fmt_num(round(s, 6)),
            shape,
            dt,
            _fmt_params(sum(x.num_params for x in ms)),
        ]
        for (label, r, alpha, s, shape, dt), ms in groups.items()
    ]
    print(_table(rows, ["module", "count", "rank", "alpha", "scaling", "out×in", "dtype", "params"]))
    if adapter.heads:
        heads = [
            [_safe(t.name), "×".join(map(str, t.shape)), t.dtype, "full copy", _fmt_params(t.num_params)]
            for t in adapter.heads.values()
        ]
        print()
        print(_table(heads, ["head", "shape", "dtype", "kind", "params"]))
    print()


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


def _merge_recipe(args: argparse.Namespace) -> _recipe.Recipe:
    """The merge a command line asks for: its recipe file (``--config``) or its arguments."""
    if args.memory_limit is not None:
        memory_limit(args.memory_limit)  # an OptionError before any work
    if args.config is not None:
        if args.adapters:
            raise RankwiseError("give adapter folders or --config, not both")
        rec = _recipe.load(args.config)
        if args.memory_limit is not None:
            rec.memory_limit = args.memory_limit  # the command line's limit over the recipe's
        return rec
    if not args.adapters:
        raise RankwiseError("no adapter folders given (or use --config recipe.yaml)")
    # Absolute: a recipe's relative paths are read relative to the recipe file's folder.
    folders = [os.path.abspath(p) for p in expand_paths(args.adapters)]
    options = _parse_options(args.option or [])
    if args.rank is not None:
        options["rank"] = args.rank
    if args.seed is not None:
        options["seed"] = args.seed
    weights = _parse_weights(args.weights, "--weights")
    peft = _parse_weights(args.peft_weights, "--peft-weights")
    if weights is not None and peft is not None:
        raise RankwiseError("give --weights or --peft-weights, not both")
    return _recipe.Recipe(
        folders,
        peft or weights,
        args.method,
        options,
        args.dtype,
        peft_weights=peft is not None,
        memory_limit=args.memory_limit,
    )


def cmd_merge(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rec = _merge_recipe(args)
    if args.dump_config:
        text = _recipe.dump(rec)
        if args.dump_config == "-":
            sys.stdout.write(text)
        else:
            with open(args.dump_config, "w", encoding="utf-8") as f:
                f.write(text)
        return 0
    if args.output is None:
        raise RankwiseError("merge needs -o/--output (or --dump-config)")
    # Before any work: an output that is (or holds, or lies in) an input would destroy it.
    check = check_file_target if args.output.endswith(".safetensors") else check_target
    check(args.output, overwrite=args.overwrite, inputs=rec.paths)
    on_ray = args.ray is not None
    # Ray workers check their own modules for NaN/inf; the driver reads headers only.
    pool = AdapterPool.load(rec.paths, format=args.format, check_finite=not on_ray)
    t_load = time.perf_counter() - t0
    merged = merge(
        pool,
        rec.method,
        weights=None if rec.peft_weights else rec.weights,
        peft_weights=rec.weights if rec.peft_weights else None,
        dtype=rec.dtype,
        progress=not args.quiet,
        heads=args.heads,
        retention=not args.no_retention,
        executor="ray" if on_ray else "local",
        ray_address=args.ray or None,
        memory_limit=rec.memory_limit,
        **rec.options,
    )
    t_merge = time.perf_counter() - t0 - t_load
    out = merged.save(args.output, overwrite=args.overwrite, format=args.output_format)
    total = time.perf_counter() - t0
    ranks = sorted({m.rank for m in merged.modules.values()})
    src_ranks = sorted({m.rank for a in pool for m in a.modules.values()})
    print(
        f"merged {len(pool)} adapters ({len(pool.modules)} modules, source ranks {src_ranks}) "
        f"with {rec.method} -> rank {ranks[0] if len(ranks) == 1 else ranks}, {merged.dtype}\n"
        f"{_target_line(merged.merge_info or {})}\n"
        + (f"heads ({args.heads or 'kept'}): {', '.join(merged.heads)}\n" if merged.heads else "")
        + f"wrote {out}\n"
        f"time: {total:.2f}s (load {t_load:.2f}s, merge {t_merge:.2f}s, write {total - t_load - t_merge:.2f}s)"
    )
    if merged.merge_info and "retention" in merged.merge_info:
        print(retention_summary(merged.merge_info["retention"]))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    pool = AdapterPool.load(args.adapters)
    rep = analyze(pool, clusters=args.clusters, sketch=args.sketch)
    if args.html:
        write_analysis(rep, args.html)
    print(rep.to_json() if args.json else rep.summary())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    pool = AdapterPool.load(args.adapters)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = compare(pool, methods, rank=args.rank)
    if args.html:
        write_compare(result, args.html)
    print(table(result))
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

    formats = ", ".join(FORMATS)
    s = sub.add_parser("inspect", help="describe LoRA adapters (PEFT folders, kohya / diffusers files)")
    s.add_argument("adapters", nargs="+", help="adapter folders, .safetensors files or globs")
    s.add_argument("--format", choices=FORMATS, default=None, help=f"force the layout ({formats}; default: detected)")
    s.add_argument("--all", action="store_true", help="one row per module instead of per projection")
    s.add_argument("--fast", action="store_true", help="skip the NaN/Inf scan of the weights")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("merge", help="merge adapters into one, in their layout")
    s.add_argument("adapters", nargs="*", help="adapter folders, .safetensors files or globs")
    s.add_argument(
        "-o", "--output", default=None, help="output folder, or .safetensors file for kohya/diffusers (atomic)"
    )
    s.add_argument("--format", choices=FORMATS, default=None, help=f"force the inputs' layout ({formats})")
    s.add_argument("--output-format", choices=FORMATS, default=None, help="layout written (default: the inputs')")
    s.add_argument("--config", default=None, help="a recipe.yaml to merge (instead of folders and options)")
    s.add_argument(
        "--dump-config",
        default=None,
        metavar="FILE",
        help="write the recipe of this command ('-': stdout), merge nothing",
    )
    s.add_argument("--no-retention", action="store_true", help="skip the per-source retention summary")
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
    s.add_argument(
        "--heads",
        default=None,
        help="full-copy heads (modules_to_save): mean (Σ w_j·head_j, w_j = 1/N by default), first, drop, "
        "or an adapter index; required when the adapters carry heads",
    )
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--memory-limit",
        default=None,
        metavar="BYTES",
        help="memory one module may take, e.g. 64MB or 2GiB (default: half the available RAM); "
        "LEGO streams a module whose unit matrix would exceed it",
    )
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

    s = sub.add_parser("analyze", help="similarity, spectra and rank units of a pool, before merging")
    s.add_argument("adapters", nargs="+", help="adapter folders or globs")
    s.add_argument("--html", default=None, help="write a self-contained HTML report here (rankwise[report])")
    s.add_argument("--json", action="store_true", help="print the whole report as JSON")
    s.add_argument("--clusters", type=int, default=None, help="also cluster the rank units into k (LEGO)")
    s.add_argument(
        "--sketch",
        type=int,
        default=None,
        help="0: exact Grams for every module; S: random projections of size S (default: exact up to 1024 units)",
    )
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("compare", help="merge one pool with several methods, retention side by side")
    s.add_argument("adapters", nargs="+", help="adapter folders or globs")
    s.add_argument("--methods", default="lego,svd,ties", help="comma-separated methods (default lego,svd,ties)")
    s.add_argument("--rank", type=int, default=None, help="merged rank for methods that take one")
    s.add_argument("--html", default=None, help="write a self-contained HTML report here (rankwise[report])")
    s.set_defaults(func=cmd_compare)

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
