#!/usr/bin/env python
"""bench_smora: is SMoRA fast enough, and does routing ranks pay off?

1. paths: dense vs gathered compute path, forward+backward, across rank / top_k (the rule
   behind ``path="auto"``, ``rankwise.smora.layer.choose_path``).
2. throughput: forward+backward tokens/s of one adapted linear: SMoRA (rank 64, top-8) against
   PEFT LoRA rank 8 and rank 64 on the same layer (target on GPU: SMoRA >= 0.9x LoRA-64).
3. multitask: five classification tasks built from scikit-learn's bundled data, mixed in one
   training run on a frozen random MLP: SMoRA vs PEFT LoRA at equal trainable parameters (and
   at equal activated rank), and SMoRA initialised ``from_pool`` (a LoRA-LEGO merge of per-task
   PEFT LoRAs) vs random init after a short training.
4. parity (CUDA only): the CUDA path's outputs and gradients against the CPU path.

    python benches/bench_smora.py --quick --write       # CPU: a few minutes on 2 cores
    python benches/bench_smora.py --write                # CUDA if available: full sizes

``--write`` replaces the SMoRA section of benches/RESULTS.md (between the bench_smora markers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("rankwise") is None:
    sys.path.insert(0, str(ROOT / "python"))  # run from a checkout without installing

from rankwise.smora import (  # noqa: E402
    SMoRAConfig,
    attach_balancer,
    from_pool,
    inject_smora,
    routing_stats,
)
from rankwise.smora.layer import GATHER_MIN_RATIO_CPU, GATHER_MIN_RATIO_CUDA  # noqa: E402

RESULTS = ROOT / "benches" / "RESULTS.md"
T0 = time.perf_counter()
LOAD0 = os.getloadavg()[0]
START, END = "<!-- bench_smora:start -->", "<!-- bench_smora:end -->"


# ------------------------------------------------------------------------------------ timing
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


CLOCK = {"clock": time.perf_counter, "name": "wall"}


def use_thread_clock() -> None:
    """CPU timing by the calling thread's CPU time with one torch thread: on a shared machine
    (here, 2 cores beside a concurrent Rust build) wall-clock varied 10x between runs, while
    the work a single thread does is unaffected by being descheduled."""
    torch.set_num_threads(1)
    CLOCK.update(clock=time.thread_time, name="thread CPU time, 1 thread")


def time_interleaved(
    fns: dict[str, Callable[[], None]], dev: torch.device, reps: int, warmup: int = 2
) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per call. Candidates are interleaved round by round so that
    machine noise hits them alike; best-of-reps is the headline number."""
    clock = CLOCK["clock"]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(dev)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _sync(dev)
            t0 = clock()
            fn()
            _sync(dev)
            times[k].append(clock() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def _fwd_bwd(module: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> Callable[[], None]:
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            y = module(x)
        y.float().square().mean().backward()

    return step


class _One(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _peft_lora(d: int, r: int, dev: torch.device) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    m = get_peft_model(_One(d, d), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"], lora_dropout=0.0))
    with torch.no_grad():
        m.base_model.model.proj.lora_B["default"].weight.normal_(0, 0.01)
    return m.to(dev).train()


def _smora(d: int, r: int, k: int, path: str, dev: torch.device, balance: bool = True):
    torch.manual_seed(0)
    m = inject_smora(
        _One(d, d),
        SMoRAConfig(rank=r, top_k=k, target_modules=["proj"], path=path, balance=balance),
    )
    with torch.no_grad():
        m.proj.lora_B.normal_(0, 0.01)
    return m.to(dev).train()


# ------------------------------------------------------------------------------------ 1. paths
def bench_paths(dev, amp, d, tokens, ranks, k, reps):
    rows = []
    x = torch.randn(tokens, d, device=dev, requires_grad=True)
    for r in ranks:
        fns = {p: _fwd_bwd(_smora(d, r, k, p, dev), x, amp) for p in ("dense", "gathered")}
        t = time_interleaved(fns, dev, reps)
        rows.append((r, r // k, t["dense"][0], t["gathered"][0]))
        print(
            f"  paths d={d} r={r} k={k}: dense {t['dense'][0] * 1e3:.1f} ms, gathered {t['gathered'][0] * 1e3:.1f} ms",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------------------------ 2. speed
def bench_throughput(dev, amp, d, tokens, reps):
    x = torch.randn(tokens, d, device=dev, requires_grad=True)
    frozen = _One(d, d).to(dev).requires_grad_(False)
    cands = {
        "frozen linear only (no adapter)": frozen,
        "PEFT LoRA r=8": _peft_lora(d, 8, dev),
        "PEFT LoRA r=64": _peft_lora(d, 64, dev),
        "SMoRA r=64 top-8, dense": _smora(d, 64, 8, "dense", dev),
        "SMoRA r=64 top-8, gathered": _smora(d, 64, 8, "gathered", dev),
        "SMoRA r=64 top-8, dense, balance off": _smora(d, 64, 8, "dense", dev, balance=False),
    }
    t = time_interleaved({k: _fwd_bwd(m, x, amp) for k, m in cands.items()}, dev, reps)
    ref = t["PEFT LoRA r=64"][0]
    rows = []
    for name, (best, med) in t.items():
        rows.append((name, tokens / best, tokens / med, ref / best))
        print(
            f"  {name}: {tokens / best:,.0f} tok/s (median {tokens / med:,.0f}), {ref / best:.2f}x LoRA-64", flush=True
        )
    return rows


# ------------------------------------------------------------------------------------ 3. tasks
TASKS = [  # name, loader, label transform, classes
    ("digits", "load_digits", None, 10),
    ("wine", "load_wine", None, 3),
    ("breast_cancer", "load_breast_cancer", None, 2),
    ("iris", "load_iris", None, 3),
    ("digits>=5", "load_digits", lambda y: (y >= 5).astype(int), 2),
]


def make_tasks(d_common: int, seed: int = 0):
    """Per task: standardised features projected into a shared d_common space by a fixed random
    matrix of that task (so tasks occupy different input subspaces, as different domains do),
    a slice of a shared output layer, and a stratified 70/30 split."""
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    out, offset = [], 0
    for name, loader, fn, n_cls in TASKS:
        ds = getattr(datasets, loader)()
        x, y = ds.data.astype(np.float32), ds.target
        if fn is not None:
            y = fn(y)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        proj = rng.standard_normal((x.shape[1], d_common)).astype(np.float32) / math.sqrt(x.shape[1])

        def enc(a, mu=mu, sd=sd, proj=proj):
            return torch.from_numpy(((a - mu) / sd) @ proj)

        out.append({
            "name": name, "lo": offset, "hi": offset + n_cls,
            "xtr": enc(xtr), "ytr": torch.from_numpy(ytr).long(),
            "xte": enc(xte), "yte": torch.from_numpy(yte).long(),
        })  # fmt: skip
        offset += n_cls
    return out, offset


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


TARGETS = ["fc1", "fc2", "head"]


def _loss(model, tasks, batch_per_task, gen):
    total = 0.0
    xs, parts = [], []
    for t in tasks:
        i = torch.randint(0, len(t["ytr"]), (batch_per_task,), generator=gen)
        xs.append(t["xtr"][i])
        parts.append((t, t["ytr"][i]))
    logits = model(torch.cat(xs))
    for j, (t, y) in enumerate(parts):
        sl = logits[j * batch_per_task : (j + 1) * batch_per_task, t["lo"] : t["hi"]]
        total = total + F.cross_entropy(sl, y)
    return total / len(tasks)


@torch.no_grad()
def evaluate(model, tasks) -> dict[str, float]:
    was = model.training
    model.eval()
    acc = {}
    for t in tasks:
        pred = model(t["xte"])[:, t["lo"] : t["hi"]].argmax(-1)
        acc[t["name"]] = float((pred == t["yte"]).float().mean())
    model.train(was)
    acc["mean"] = sum(acc[t["name"]] for t in tasks) / len(tasks)
    return acc


def train(model, tasks, steps, lr, seed, checkpoints=(), balancer=False):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    if balancer:
        attach_balancer(opt, model)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    curve = {0: evaluate(model, tasks)} if 0 in checkpoints else {}
    for step in range(1, steps + 1):
        loss = _loss(model, tasks, 32, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step in checkpoints:
            curve[step] = evaluate(model, tasks)
    curve[steps] = evaluate(model, tasks)
    return curve


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _base(d, hidden, n_out, seed=0):
    torch.manual_seed(1000 + seed)  # the frozen "pretrained" model: the same for every arm
    return MLP(d, hidden, n_out)


def _peft(base, r, alpha):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.0))


def bench_multitask(args):
    # Tiny ops: one thread avoids OpenMP barrier stalls on a shared 2-core machine (measured:
    # 5 ms/step with 1 thread vs 120 ms with 2 while another process held a core).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench_multitask(args)
    finally:
        torch.set_num_threads(threads)


def _bench_multitask(args):
    d, hidden = 64, 128
    tasks, n_out = make_tasks(d)
    steps, lr, seeds = args.mt_steps, args.mt_lr, list(range(args.seeds))
    smora_cfg = {"rank": 64, "top_k": 8, "lora_alpha": 16.0, "target_modules": TARGETS}
    arms: dict[str, list[dict]] = {}
    params: dict[str, int] = {}
    entropy: list[float] = []

    def run(name, make, balancer=False):
        for s in seeds:
            torch.manual_seed(s)
            model = make(s)
            params[name] = _trainable(model)
            acc = train(model, tasks, steps, lr, s, balancer=balancer)[steps]
            arms.setdefault(name, []).append(acc)
            if balancer:
                st = routing_stats(model)
                entropy.append(statistics.mean(v.normalized_entropy for v in st.values()))
        print(
            f"  {name}: mean acc {statistics.mean(a['mean'] for a in arms[name]):.4f} ({params[name]:,} trainable)",
            flush=True,
        )

    run("SMoRA r=64 top-8", lambda s: inject_smora(_base(d, hidden, n_out), SMoRAConfig(**smora_cfg)), balancer=True)
    per_rank = sum(
        m.in_features + m.out_features for m in _base(d, hidden, n_out).modules() if isinstance(m, nn.Linear)
    )
    r_eq = round(params["SMoRA r=64 top-8"] / per_rank)
    for r in (8, 64, r_eq):
        # alpha = 2r: LoRA scale 2, the same as SMoRA's lora_alpha / k = 16 / 8.
        run(
            f"PEFT LoRA r={r}" + (" (= SMoRA params)" if r == r_eq else ""),
            lambda s, r=r: _peft(_base(d, hidden, n_out), r, 2 * r),
        )

    pool_rows = bench_from_pool(args, tasks, n_out, d, hidden, smora_cfg)
    return {"arms": arms, "params": params, "entropy": entropy, "tasks": tasks, "pool": pool_rows, "r_eq": r_eq}


def bench_from_pool(args, tasks, n_out, d, hidden, smora_cfg):
    """Per-task PEFT LoRAs (rank 16, 5 tasks: 80 units per module) -> LEGO merge to rank 64 ->
    SMoRA experts; then the same short multi-task training as a randomly initialised SMoRA."""
    try:
        import rankwise as rw

        rw.merge  # noqa: B018  (raises if the merge API or the compiled core is missing)
        rw.AdapterPool  # noqa: B018
    except Exception as e:
        print(f"  from_pool: skipped, rankwise.merge unavailable ({type(e).__name__}: {e})")
        return {"skipped": f"rankwise.merge unavailable: {type(e).__name__}: {e}"}
    from peft import PeftModel

    checkpoints = tuple(sorted({0, args.pool_steps // 4, args.pool_steps}))
    curves: dict[str, list[dict]] = {"from_pool (LEGO)": [], "random init": []}
    refs: dict[str, list[float]] = {"oracle": [], "merged": []}
    for s in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            dirs, own = [], []
            for i, t in enumerate(tasks):
                torch.manual_seed(100 * s + i)
                pm = _peft(_base(d, hidden, n_out), 16, 32)
                train(pm, [t], args.task_steps, args.mt_lr, 100 * s + i)
                own.append(evaluate(pm, [t])[t["name"]])
                out = Path(tmp) / t["name"]
                pm.save_pretrained(str(out))
                dirs.append(out)
            refs["oracle"].append(statistics.mean(own))
            merged = rw.merge(rw.AdapterPool.load([str(p) for p in dirs]), method="lego", rank=64, seed=s)
            merged.save(Path(tmp) / "merged")
            plain = PeftModel.from_pretrained(_base(d, hidden, n_out), str(Path(tmp) / "merged"))
            refs["merged"].append(evaluate(plain, tasks)["mean"])
            torch.manual_seed(s)
            m_pool = from_pool(_base(d, hidden, n_out), merged, SMoRAConfig(**smora_cfg))
            torch.manual_seed(s)
            m_rand = inject_smora(_base(d, hidden, n_out), SMoRAConfig(**smora_cfg))
            for name, m in (("from_pool (LEGO)", m_pool), ("random init", m_rand)):
                curves[name].append(train(m, tasks, args.pool_steps, args.mt_lr, s, checkpoints, balancer=True))
    for name, cs in curves.items():
        print(
            f"  {name}: " + ", ".join(f"step {c}: {statistics.mean(x[c]['mean'] for x in cs):.4f}" for c in checkpoints)
        )
    print(
        f"  per-task LoRAs on their own task: {statistics.mean(refs['oracle']):.4f}; "
        f"LEGO merge as one plain LoRA: {statistics.mean(refs['merged']):.4f}"
    )
    return {"curves": curves, "checkpoints": checkpoints, "refs": refs}


# ------------------------------------------------------------------------------------ 4. parity
def bench_parity(dtype_note: str):
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for path in ("dense", "gathered"):
        cpu = _smora(256, 64, 8, path, torch.device("cpu"))
        gpu = copy.deepcopy(cpu).cuda()
        x = torch.randn(4, 33, 256)
        xc, xg = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
        yc, yg = cpu(xc), gpu(xg)
        yc.square().mean().backward()
        yg.square().mean().backward()
        same_idx = bool(
            torch.equal(
                cpu.proj.route(cpu.proj.router(x.reshape(-1, 256)))[0].sort(-1).values,
                gpu.proj.route(gpu.proj.router(x.cuda().reshape(-1, 256)))[0].sort(-1).values.cpu(),
            )
        )
        dy = float((yc - yg.cpu()).abs().max())
        dg = max(
            float((a.grad - b.grad.cpu()).abs().max() / a.grad.abs().max())
            for a, b in (
                (cpu.proj.lora_A, gpu.proj.lora_A),
                (cpu.proj.lora_B, gpu.proj.lora_B),
                (cpu.proj.router.weight, gpu.proj.router.weight),
            )
        )
        rows.append((path, same_idx, dy, dg))
        print(f"  parity {path}: same top-k {same_idx}, max |dy| {dy:.2e}, max rel dgrad {dg:.2e}")
    return rows


# ------------------------------------------------------------------------------------ report
def _commit() -> str:
    try:
        git = ["git", "-C", str(ROOT)]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(args, dev, amp, paths, speed, mt, parity) -> str:
    cmd = "python benches/bench_smora.py " + " ".join(sys.argv[1:])
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    cpu_name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu_name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    out = [
        "## SMoRA (benches/bench_smora.py)",
        "",
        f"Command: `{cmd}` ({time.perf_counter() - T0:.0f} s in all)",
        "",
        f"Machine: {dev_name}; CPU {cpu_name}, {os.cpu_count()} cores; load avg {LOAD0:.1f} at start; "
        f"Python {platform.python_version()}, torch {torch.__version__}; commit {_commit()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"Precision: {'autocast ' + str(amp).removeprefix('torch.') if amp else 'float32'}. Timing: "
        + (
            "CUDA-synchronised wall-clock."
            if dev.type == "cuda"
            else "the calling thread's CPU time (`time.thread_time`) with one torch thread, because the "
            "2-core machine was shared with concurrent builds (wall-clock varied up to 10x between runs); "
            "tokens/s is per CPU-second of one core."
        ),
        "",
    ]
    if dev.type != "cuda":
        out += [
            "**No GPU was lent to this task**: every number below is from the CPU. The CUDA "
            "path is the same device-agnostic torch code; its parity with the CPU path and the "
            "GPU throughput target (SMoRA >= 0.9x PEFT LoRA-64) are not measured yet: run "
            "`python benches/bench_smora.py --write` on a GPU host.",
            "",
        ]
    if paths:
        out += [
            f"### Dense vs gathered path (forward+backward, d={args.d}, {args.path_tokens} tokens, "
            f"top-{args.k}; best of {args.reps})",
            "",
            _table(
                ["rank", "rank/top_k", "dense ms", "gathered ms", "gathered/dense"],
                [(r, q, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{b / a:.2f}x") for r, q, a, b in paths],
            ),
            "",
        ]
        wins = [q for _, q, a, b in paths if b < a]
        limit = GATHER_MIN_RATIO_CUDA if dev.type == "cuda" else GATHER_MIN_RATIO_CPU
        out += [
            f"Gathered is faster from rank/top_k = {min(wins)} on this device."
            if wins
            else "Gathered is never faster in the measured range on this device.",
            f'`path="auto"` (`rankwise.smora.layer.choose_path`) uses gathered from rank/top_k >= {limit} '
            f"on {dev.type} (CPU: {GATHER_MIN_RATIO_CPU}, measured; CUDA: {GATHER_MIN_RATIO_CUDA}, "
            "reasoned from the GEMM-to-bandwidth ratio until measured), dense below: at the paper's "
            "rank 64 / top-8 that is dense.",
            "",
        ]
    if speed:
        out += [
            f"### Throughput, one {args.d}x{args.d} linear, {args.tokens} tokens per step "
            f"(forward+backward, input requires grad; best / median of {args.reps})",
            "",
            _table(
                ["layer", "tokens/s (best)", "tokens/s (median)", "vs PEFT LoRA-64"],
                [(n, f"{a:,.0f}", f"{b:,.0f}", f"{c:.2f}x") for n, a, b, c in speed],
            ),
            "",
        ]
        by = {n: a for n, a, _, _ in speed}
        sm, l64, l8 = by["SMoRA r=64 top-8, dense"], by["PEFT LoRA r=64"], by["PEFT LoRA r=8"]
        out += [
            f"SMoRA r=64 top-8 on its auto path (dense) runs at {sm / l64:.2f}x PEFT LoRA-64 and "
            f"{sm / l8:.2f}x PEFT LoRA-8 here (router GEMM, top-k, gates and balance counting included).",
            "",
        ]
    if mt:
        names = [t["name"] for t in mt["tasks"]]
        rows = []
        for arm, accs in mt["arms"].items():
            mean = [a["mean"] for a in accs]
            sd = statistics.pstdev(mean) if len(mean) > 1 else 0.0
            rows.append(
                [arm, f"{mt['params'][arm]:,}"]
                + [f"{statistics.mean(a[n] for a in accs):.3f}" for n in names]
                + [f"{statistics.mean(mean):.4f} ± {sd:.4f}"]
            )
        out += [
            f"### Multi-task accuracy ({len(names)} tasks mixed; frozen random MLP 64-128-128-"
            f"{sum(t['hi'] - t['lo'] for t in mt['tasks'])}, adapters on fc1, fc2, head; "
            f"{args.mt_steps} AdamW steps, lr {args.mt_lr}, cosine, 32 examples per task per "
            f"step; test accuracy, mean over {args.seeds} seeds)",
            "",
            _table(["adapter", "trainable", *names, "mean ± sd"], rows),
            "",
        ]
        means = {arm: statistics.mean(a["mean"] for a in accs) for arm, accs in mt["arms"].items()}
        eq = next(a for a in means if "= SMoRA params" in a)
        sm = means["SMoRA r=64 top-8"]
        out += [
            f"SMoRA - LoRA at equal trainable parameters: {sm - means[eq]:+.4f}; SMoRA - LoRA-8 (equal "
            f"activated rank): {sm - means['PEFT LoRA r=8']:+.4f}; SMoRA - LoRA-64: "
            f"{sm - means['PEFT LoRA r=64']:+.4f} (mean test accuracy).",
            "",
        ]
        if mt["entropy"]:
            out += [
                f"SMoRA rank-usage entropy at the end (normalised, 1 = even): {statistics.mean(mt['entropy']):.3f}.",
                "",
            ]
        pool = mt["pool"]
        if "skipped" in pool:
            out += [f"from_pool vs random init: **not run** ({pool['skipped']}).", ""]
        else:
            cps = pool["checkpoints"]
            prow = []
            for name, cs in pool["curves"].items():
                prow.append(
                    [f"SMoRA r=64 top-8, {name}"] + [f"{statistics.mean(c[s]['mean'] for c in cs):.4f}" for s in cps]
                )
            blank = [""] * (len(cps) - 1)
            prow.append(
                [
                    "LEGO merge as one plain LoRA r=64 (no routing, untrained)",
                    f"{statistics.mean(pool['refs']['merged']):.4f}",
                    *blank,
                ]
            )
            prow.append(
                [
                    "per-task LoRAs, each on its own task (5 adapters; reference)",
                    f"{statistics.mean(pool['refs']['oracle']):.4f}",
                    *blank,
                ]
            )
            out += [
                "### from_pool (LEGO merge of per-task LoRAs as rank experts) vs random init",
                "",
                f"Pool: one PEFT LoRA (rank 16, alpha 32) per task, {args.task_steps} steps on its task "
                f"alone (80 units per module); `rw.merge(pool, method='lego', rank=64)`; `from_pool` puts the "
                f"64 merged units in as SMoRA's rank experts (top-8, random router); then the same mixed "
                f"training as above (balancer on) for {args.pool_steps} steps. Mean test accuracy over tasks "
                f"and {args.seeds} seeds at each step:",
                "",
                _table(["model", *[f"step {s}" for s in cps]], prow),
                "",
            ]
            cur = pool["curves"]
            gain = [
                statistics.mean(c[s]["mean"] for c in cur["from_pool (LEGO)"])
                - statistics.mean(c[s]["mean"] for c in cur["random init"])
                for s in cps
            ]
            out += [
                "from_pool - random init: " + ", ".join(f"{g:+.4f} at step {s}" for s, g in zip(cps, gain)) + ".",
                "",
            ]
    if parity:
        out += [
            "### CUDA vs CPU parity (float32, TF32 off; 4x33 tokens, d=256, r=64, top-8)",
            "",
            _table(
                ["path", "same top-k", "max abs(y_cuda - y_cpu)", "max rel. grad diff"],
                [(p, s, f"{a:.1e}", f"{b:.1e}") for p, s, a, b in parity],
            ),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def write_section(text: str) -> None:
    block = f"{START}\n{text}{END}\n"
    old = RESULTS.read_text() if RESULTS.exists() else "# rankwise benchmark results\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + block + (("\n" + tail) if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(new)
    print(f"wrote the SMoRA section of {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if available)")
    ap.add_argument("--quick", action="store_true", help="CPU-sized run (a few minutes)")
    ap.add_argument("--only", default="paths,throughput,multitask,parity")
    ap.add_argument("--write", action="store_true", help="update benches/RESULTS.md")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument(
        "--cpu-clock",
        choices=["thread", "wall"],
        default="thread",
        help="CPU timing: one thread's CPU time (default; robust on a shared machine) or wall-clock",
    )
    args = ap.parse_args()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = dev.type == "cuda"
    args.d = 4096 if gpu else 1024
    args.tokens = 16384 if gpu else 2048
    args.path_tokens = 8192 if gpu else 1024
    args.k = 8
    args.reps = 20 if gpu else (7 if args.quick else 15)
    ranks = [16, 64, 256, 1024, 2048, 4096] if gpu else [16, 64, 256, 1024, 2048]
    args.mt_steps = 300 if args.quick else 600
    args.mt_lr = 3e-3
    args.task_steps = 200 if args.quick else 400
    args.pool_steps = 100 if args.quick else 200
    args.seeds = args.seeds or (3 if args.quick else 5)
    amp = torch.bfloat16 if gpu else None
    only = set(args.only.split(","))
    torch.set_float32_matmul_precision("high" if gpu else "highest")

    if not gpu and args.cpu_clock == "thread":
        use_thread_clock()
    paths = speed = mt = parity = None
    if "paths" in only:
        print("paths:", flush=True)
        paths = bench_paths(dev, amp, args.d, args.path_tokens, ranks, args.k, args.reps)
    if "throughput" in only:
        print("throughput:", flush=True)
        speed = bench_throughput(dev, amp, args.d, args.tokens, args.reps)
    if "multitask" in only:
        print("multitask (CPU):", flush=True)
        mt = bench_multitask(args)
    if "parity" in only and torch.cuda.is_available():
        print("parity:", flush=True)
        parity = bench_parity("float32")
    text = report(args, dev, amp, paths, speed, mt, parity)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
