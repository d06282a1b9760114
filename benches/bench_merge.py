"""Merging a pool end to end (load -> merge -> save): rankwise LEGO vs PEFT's add_weighted_adapter.

    python benches/bench_merge.py [--n 32] [--big-n 500] [--quick] [--write]

Part 1, against PEFT, on ``--n`` rank-16 fp16 adapters of the ``small`` shape (hidden 1024,
8 layers, q/v): rankwise ``AdapterPool.load`` -> ``rw.merge(pool, method="lego", rank=16)`` ->
``Adapter.save``, and rankwise's own ``svd``/``cat`` when registered; PEFT: a
``LlamaForCausalLM`` of that shape (random init, float32, nothing downloaded),
``PeftModel.from_pretrained`` + ``load_adapter`` for the others, then ``add_weighted_adapter``
(``combination_type="svd"`` with ``svd_rank=16``, PEFT's other SVD defaults; and ``"cat"``)
and ``save_pretrained`` of the merged adapter. PEFT's total excludes building the base model
(reported apart), which favours PEFT.

Part 2: rankwise LEGO alone on ``--big-n`` rank-16 fp16 adapters of ``llama-7b-qv`` (32 layers ×
q/v, 4096 × 4096; 500 adapters are 8.4 GB): wall time and peak memory.

Every run is a fresh child process (its peak RSS is its own), the rows in one order every
round; rankwise and torch use 2 threads, numpy's OpenBLAS ``--rw-blas-threads`` (1) in the
rankwise children: its idle workers busy-wait after each BLAS call of LEGO's assembly and take
the cores from rankwise's pool (two more LEGO rows show it, with OpenBLAS on 2 threads, and in a
process that has just run torch; ``--no-variants`` skips them); seeds fixed; warm page cache
(every file is read once before each run); each clock starts after the imports and a short pause
(``_common.settle``). ``--write`` replaces this host kind's bench_merge section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C


def _paths(pool_dir: Path, n: int) -> list[Path]:
    return sorted(pool_dir.glob("adapter_*"))[:n]


def _rw_child(args: argparse.Namespace) -> dict:
    if args.after_torch:
        _run_torch(args.threads)
    import rankwise as rw

    # Imports outside the timed window, as for PEFT (torch, transformers and peft are imported
    # before its clock starts): rankwise imports its submodules and merge methods lazily.
    rw.merge_methods()
    _ = rw.AdapterPool

    C.set_threads(args.threads)
    paths = _paths(args.pool_dir, args.n)
    C.warm_page_cache([p / "adapter_model.safetensors" for p in paths])
    out = Path(tempfile.mkdtemp(prefix="rw-merge-", dir=C.POOLS)) / "merged"
    C.settle()
    # Each method's own name for the output rank (cat's is the sum of the ranks).
    opts = {"lego": {"rank": args.rank, "seed": 0}, "svd": {"svd_rank": args.rank}}.get(args.method, {})
    try:
        res = _rw_run(args, rw, paths, out, opts)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return res


def _run_torch(threads: int) -> None:
    """What a process that just used torch leaves behind (PEFT's model build and merge in the same
    process): torch imported, its OpenMP pool started and used with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    for _ in range(20):
        a = torch.tanh(a @ a / 32)


def _rw_run(args: argparse.Namespace, rw: Any, paths: list[Path], out: Path, opts: dict) -> dict:
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    with C.peak_memory() as mem:
        mem.phase = "load"
        t0 = time.perf_counter()
        pool = rw.AdapterPool.load(paths)
        t1 = time.perf_counter()
        rss_after_load = C._status_kb("VmRSS") / 1024
        mem.phase = "merge"
        if prof:
            prof.enable()
        merged = rw.merge(pool, method=args.method, **opts)
        if prof:
            prof.disable()
        t2 = time.perf_counter()
        mem.phase = "save"
        merged.save(out)
        t3 = time.perf_counter()
    if prof:
        import pstats

        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    ranks = sorted({m.rank for m in merged.modules.values()})
    return {
        "load_s": t1 - t0, "merge_s": t2 - t1, "save_s": t3 - t2, "total_s": t3 - t0,
        "peak_rss_mb": mem.peak_rss_kb / 1024, "peak_anon_mb": mem.peak_anon_kb / 1024,
        "ru_maxrss_mb": C.peak_rss_mb(), "rss_after_load_mb": rss_after_load,
        "out_rank": ranks, "out_dtype": merged.dtype, "phases": mem.phases,
        "timings": (merged.merge_info or {}).get("timings", {}),
    }  # fmt: skip


def _peft_child(args: argparse.Namespace) -> dict:
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from make_pool import SHAPES

    hf_logging.set_verbosity_error()
    C.set_threads(args.threads)
    torch.manual_seed(0)
    paths = _paths(args.pool_dir, args.n)
    C.warm_page_cache([p / "adapter_model.safetensors" for p in paths])
    out = Path(tempfile.mkdtemp(prefix="peft-merge-", dir=C.POOLS))
    C.settle()
    with C.peak_memory() as mem:
        t0 = time.perf_counter()
        base = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape].llama_config())).eval()
        t1 = time.perf_counter()
        pm = PeftModel.from_pretrained(base, str(paths[0]), adapter_name="a0")
        for i, p in enumerate(paths[1:], start=1):
            pm.load_adapter(str(p), adapter_name=f"a{i}")
        t2 = time.perf_counter()
        names = [f"a{i}" for i in range(len(paths))]
        kw = {"svd_rank": args.rank} if args.method == "svd" else {}
        with torch.no_grad():
            pm.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type=args.method, **kw)
        t3 = time.perf_counter()
        pm.save_pretrained(str(out), selected_adapters=["merged"])
        t4 = time.perf_counter()
    cfg = json.loads((out / "merged" / "adapter_config.json").read_text())
    shutil.rmtree(out)
    return {
        "build_s": t1 - t0, "load_s": t2 - t1, "merge_s": t3 - t2, "save_s": t4 - t3, "total_s": t4 - t1,
        "peak_rss_mb": mem.peak_rss_kb / 1024, "peak_anon_mb": mem.peak_anon_kb / 1024,
        "ru_maxrss_mb": C.peak_rss_mb(), "out_rank": [cfg["r"]],
    }  # fmt: skip


def _child_argv(args: argparse.Namespace, kind: str, method: str, pool_dir: Path, n: int, shape: str) -> list[str]:
    argv = [__file__, "--child", kind, "--method", method, "--pool-dir", str(pool_dir), "--n", str(n),
            "--rank", str(args.rank), "--threads", str(args.threads), "--shape", shape]  # fmt: skip
    return argv + (["--profile"] if args.profile else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32, help="adapters of `small` for the PEFT comparison")
    p.add_argument("--big-n", type=int, default=500, help="adapters of `llama-7b-qv` for the big run (0: skip)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peft", default="svd,cat", help="PEFT combination types (empty: skip PEFT)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each `small` row (the median run is shown)")
    p.add_argument("--quick", action="store_true", help="8 small adapters, 20 big ones")
    p.add_argument("--profile", action="store_true", help="cProfile rankwise's merge (to stderr)")
    p.add_argument("--write", action="store_true", help="replace the bench_merge section of RESULTS.md")
    p.add_argument(
        "--rw-blas-threads",
        type=int,
        default=1,
        help="OPENBLAS_NUM_THREADS of the rankwise children (numpy's BLAS; rankwise's pool has --threads)",
    )
    p.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="skip the LEGO rows with numpy's BLAS on --threads threads and after torch",
    )
    p.add_argument("--after-torch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["rw", "peft"], help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--pool-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--shape", default="small", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res = _rw_child(args) if args.child == "rw" else _peft_child(args)
        print(json.dumps(res))
        return
    if args.quick:
        args.n, args.big_n = 8, 20

    import rankwise as rw

    machine = C.machine_info()
    t_start = time.perf_counter()
    methods = rw.merge_methods()
    rw_methods = ["lego"] + [m for m in ("svd", "cat") if m in methods]
    peft_methods = [m for m in args.peft.split(",") if m]
    parts = []

    # ---- part 1: rankwise vs PEFT on `small`
    paths = C.ensure_pool("small", args.n, rank=args.rank, dtype="f16")
    pool_dir = paths[0].parent
    # Every row is run `repeat` times, the rows interleaved (host drift spreads over all of them);
    # the row shows its median run, and the range of its totals.
    # (row key, child kind, method, extra argv, child environment), in one order every run.
    blas = {"OPENBLAS_NUM_THREADS": str(args.rw_blas_threads)}
    rows_run = [(f"rw {m}", "rw", m, [], blas) for m in rw_methods]
    if args.variants:
        env_blas = {"OPENBLAS_NUM_THREADS": str(args.threads)}
        rows_run += [
            ("rw lego blas", "rw", "lego", [], env_blas),
            ("rw lego torch", "rw", "lego", ["--after-torch"], blas),
        ]
    rows_run += [(f"peft {m}", "peft", m, [], {}) for m in peft_methods]
    runs: dict[str, list[dict]] = {}
    for _ in range(max(1, args.repeat)):
        for key, kind, m, extra, env in rows_run:
            argv = _child_argv(args, kind, m, pool_dir, args.n, "small") + extra
            # The host needs a moment after a child with GBs of pages exits: a 0.15 s run
            # started at once took 0.2 s instead of 0.13.
            time.sleep(2.0)
            r = C.run_child(argv, env=env, echo_stderr=args.profile and kind == "rw")
            runs.setdefault(key, []).append(r)
            print(f"{key}: {r}", file=sys.stderr)
    res = {name: sorted(rs, key=lambda r: r["total_s"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
    ref = res.get("peft svd")
    headers = ["method", "out rank", "build base s", "load s", "merge s", "save s", "total s",
               f"total s, {args.repeat} runs", "peak RSS MB", "peak anon MB", "speed-up vs PEFT svd"]  # fmt: skip
    rows = []
    for name, r in res.items():
        lib, m, *variant = name.split()
        label = f"rankwise `{m}`" if lib == "rw" else f"PEFT `add_weighted_adapter({m!r})`"
        if variant == ["blas"]:
            label += f", numpy's OpenBLAS with {args.threads} threads"
        elif variant == ["torch"]:
            label += ", in a process that has just run torch"
        speed = f"**{ref['total_s'] / r['total_s']:.1f}×**" if ref else "–"
        totals = [x["total_s"] for x in runs[name]]
        spread = f"{min(totals):.3g}–{max(totals):.3g}"
        rows.append([label, "/".join(map(str, r["out_rank"])), r.get("build_s", "–"), r["load_s"], r["merge_s"],
                     r["save_s"], r["total_s"], spread, r["peak_rss_mb"], r["peak_anon_mb"], speed])  # fmt: skip
    if ref and "rw svd" in runs:
        ratios = sorted(p["total_s"] / q["total_s"] for p, q in zip(runs["peft svd"], runs["rw svd"]))
        pt, rt = ([x["total_s"] for x in runs[k]] for k in ("peft svd", "rw svd"))
        parts.append(
            f"rankwise `svd` vs PEFT `svd`, run by run (sorted): {', '.join(f'{x:.1f}×' for x in ratios)}; "
            f"PEFT's totals spread {min(pt):.2f}–{max(pt):.2f} s, rankwise's {min(rt):.3f}–{max(rt):.3f} s."
        )
    title = f"**{args.n} × `small` rank {args.rank} fp16, merged to rank {args.rank}**"
    parts.insert(0, f"{title}\n\n" + C.md_table(headers, rows))

    # ---- part 2: rankwise LEGO alone on llama-7b-qv
    if args.big_n:
        big = C.ensure_pool("llama-7b-qv", args.big_n, rank=args.rank, dtype="f16")
        gb = sum((q / "adapter_model.safetensors").stat().st_size for q in big) / 1e9
        argv = _child_argv(args, "rw", "lego", big[0].parent, args.big_n, "llama-7b-qv")
        r = C.run_child(argv, env=blas, timeout=7200, echo_stderr=args.profile)
        print(f"rankwise lego big: {r}", file=sys.stderr)
        ph = r["phases"]
        headers = ["method", "adapters", "GB on disk", "load s", "merge s", "save s", "total s",
                   "peak RSS MB (ru_maxrss)", "peak anon MB", "peak RSS MB: load / merge / save"]  # fmt: skip
        per_phase = " / ".join(f"{ph.get(k, {}).get('rss_mb', 0):.0f}" for k in ("load", "merge", "save"))
        rows = [[f"rankwise `lego` rank {args.rank}", args.big_n, gb, r["load_s"], r["merge_s"], r["save_s"],
                 r["total_s"], r["ru_maxrss_mb"], r["peak_anon_mb"], per_phase]]  # fmt: skip
        parts.append(f"**{args.big_n} × `llama-7b-qv` rank {args.rank} fp16 ({gb:.1f} GB), LEGO to rank "
                     f"{args.rank}**\n\n" + C.md_table(headers, rows))  # fmt: skip
        if r.get("timings"):
            split = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
            parts.append(f"Merge time by phase (rankwise's `merge_info['timings']`, summed over modules): {split}.")
        load_rss, merge_rss = ph.get("load", {}).get("rss_mb", 0), ph.get("merge", {}).get("rss_mb", 0)
        if load_rss > merge_rss:
            parts.append(
                f"The process peak ({r['ru_maxrss_mb']:.0f} MB) is reached in `AdapterPool.load`: its finite check "
                "touches every mapped page of every file before any is released, so the whole pool is resident "
                f"(file-backed, reclaimable) for a moment. From the merge on, the peak is {merge_rss:.0f} MB "
                f"(anon {ph['merge']['anon_mb']:.0f} MB): one module's unit matrix and the k-means work on it."
            )

    body = "\n\n".join(parts)
    print(body)
    if args.write:
        section = (
            f"## bench_merge ({C.host_kind()[1]}): merging end to end, rankwise LEGO vs PEFT add_weighted_adapter\n\n"
            f"Command: `{C.command_line()}` ({time.perf_counter() - t_start:.0f} s in all)\n\n"
            f"{machine} Load avg at end: {os.getloadavg()[0]:.1f} (shared host: timings of one run vary).\n\n"
            "Each row is a fresh process on a warm page cache, its clock started after the imports "
            "and a 0.5 s pause (idle BLAS threads spinning after numpy's import took ~10% of a "
            f"0.15 s merge); rankwise and torch with {args.threads} threads; numpy's OpenBLAS with "
            f"{args.rw_blas_threads} thread(s) in the rankwise children (`OPENBLAS_NUM_THREADS`; its idle "
            "workers spin after each call of LEGO's assembly and take the cores from rankwise's pool: "
            f"the row 'numpy's OpenBLAS with {args.threads} threads' shows the cost); LEGO with its defaults "
            "(k-means++ init, n_init=3, max_iter=100, "
            "seed 0). Synthetic adapters from `benches/make_pool.py` (seed 0, unclustered). PEFT: "
            "float32 random-init `LlamaForCausalLM` of the same shape, `from_pretrained` + "
            "`load_adapter`, `add_weighted_adapter(weights=1)` (svd: `svd_rank`, PEFT's defaults "
            "otherwise), `save_pretrained`; its total excludes building the base model. "
            "Speed-up: PEFT svd's median total / this median total. Peak RSS counts the mapped adapter pages the "
            "process touched (page cache, reclaimable); peak anon is the process's own memory.\n\n"
            f"{body}\n"
        )
        C.write_section(f"bench_merge@{C.host_kind()[0]}", section)
        print(f"wrote the bench_merge section of {C.RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
