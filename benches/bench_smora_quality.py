#!/usr/bin/env python
"""bench_smora_quality: do rank-wise experts beat multi-LoRA MoE and LoRA on heterogeneous tasks?

A byte-level tiny Llama is pretrained from scratch on one kind of text (Perl modules), then
adapted on a mix of other kinds, each a task: Python stdlib sources, /usr/share/common-licenses,
/usr/share/doc/*/copyright, C headers. All adapters sit on every linear layer and are SMoRA layers
with a block size (the paper's unified view; block_size=rank, top_k=1 is plain LoRA, tested equal
to PEFT): SMoRA 64/8, MoE-LoRA 8x8 top-1 and top-2, LoRA-8 (equal activated rank), LoRA-64 (equal
total rank), plus a balance-rate variant for choosing the default. Quality: held-out
loss in bits per byte per task; mean over tasks, mean ± std over seeds. Routed vs exported
(``export_lora``, loaded by ``PeftModel.from_pretrained``): how much of the routed gain over the
base model the plain-LoRA export keeps.

    nice -n 10 python benches/bench_smora_quality.py --write      # one process, all seeds
    # or one process per seed, then render them together:
    for s in 0 1 2; do nice -n 10 python benches/bench_smora_quality.py --seed-list $s --dump /tmp/q$s.json & done
    wait; python benches/bench_smora_quality.py --from-json /tmp/q?.json --write

``--write`` replaces the section between the bench_smora_quality markers in benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rankwise.smora import SMoRAConfig, attach_balancer, export_lora, inject_smora, routing_stats

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- bench_smora_quality:start -->", "<!-- bench_smora_quality:end -->"

BASE_TEXT = "/usr/share/perl/5*/**/*.pm"
TASKS = {
    "python": "/usr/lib/python3*/*.py",
    "licenses": "/usr/share/common-licenses/*",
    "doc-copyright": "/usr/share/doc/*/copyright",
    "c-headers": "/usr/include/*.h",
}
# name -> (rank, top_k, block_size, balance_rate)
CONFIGS = {
    "SMoRA 64/8": (64, 8, 1, 1e-5),
    "SMoRA 64/8 u=1e-3": (64, 8, 1, 1e-3),
    "MoE-LoRA 8x8 top-1": (64, 1, 8, 1e-5),
    "MoE-LoRA 8x8 top-2": (64, 2, 8, 1e-5),
    "LoRA-8": (8, 1, 8, 0.0),
    "LoRA-64": (64, 1, 64, 0.0),
}
ROUTED = [n for n, (r, k, b, _) in CONFIGS.items() if b < r]


def corpus(pattern: str, max_bytes: int) -> torch.Tensor:
    data = bytearray()
    for f in sorted(glob.glob(pattern, recursive=True)):
        try:
            data += Path(f).read_bytes()[:20000]
        except OSError:
            continue
        if len(data) >= max_bytes:
            break
    if len(data) < 10000:
        raise SystemExit(f"too little text at {pattern} ({len(data)} bytes)")
    return torch.tensor(list(data[:max_bytes]), dtype=torch.long)


def tiny_llama(seq: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq,
    )
    return LlamaForCausalLM(cfg)


def windows(data: torch.Tensor, n: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq - 1, (n,), generator=gen)
    return torch.stack([data[s : s + seq] for s in starts.tolist()])


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1))


@torch.no_grad()
def bits_per_byte(model: torch.nn.Module, tests: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    return {t: float(lm_loss(model, ids)) / math.log(2) for t, ids in tests.items()}


def pretrain(base_data: torch.Tensor, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_llama(args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(args.base_steps):
        loss = lm_loss(model, windows(base_data, args.batch, args.seq, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def adapt(base, name, seed, train, tests, args, scratch: Path) -> dict:
    rank, top_k, block, rate = CONFIGS[name]
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    cfg = SMoRAConfig(rank=rank, top_k=top_k, block_size=block, balance=rate > 0, balance_rate=rate)
    inject_smora(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    attach_balancer(opt, model)
    gen = torch.Generator().manual_seed(1000 + seed)
    per_task = max(1, args.batch // len(train))

    def mixed() -> torch.Tensor:
        return torch.cat([windows(d, per_task, args.seq, gen) for d in train.values()])

    model.train()
    for _ in range(args.steps):
        loss = lm_loss(model, mixed())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    out = {"routed": bits_per_byte(model, tests), "params": sum(p.numel() for p in params)}
    if name in ROUTED:
        st = [s.normalized_entropy for s in routing_stats(model).values() if s.tokens]
        out["entropy"] = statistics.mean(st) if st else float("nan")
        from peft import PeftModel

        calib = [{"input_ids": mixed()} for _ in range(args.calib)]
        folder = export_lora(model, calib, path=tempfile.mkdtemp(dir=scratch))
        exported = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
        out["exported"] = bits_per_byte(exported, tests)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--base-steps", type=int, default=120)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--calib", type=int, default=4, help="calibration batches for the export")
    ap.add_argument("--bytes", type=int, default=200_000, help="bytes of text per task")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset (names have no commas)")
    ap.add_argument("--seed-list", default=None, help="comma-separated seeds (default: range(--seeds))")
    ap.add_argument("--dump", default=None, help="write the raw results to this JSON file")
    ap.add_argument("--from-json", nargs="+", default=None, help="render results dumped by runs per seed")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json]
        results = {n: [r for run in runs for r in run["results"][n]] for n in runs[0]["results"]}
        args.seeds = sum(len(run["seeds"]) for run in runs)
        report = render(args, runs[0]["base"], results, max(run["seconds"] for run in runs))
        print(report)
        if args.write:
            write(report)
        return

    base_data = corpus(BASE_TEXT, args.bytes)
    train, tests = {}, {}
    gen = torch.Generator().manual_seed(7)
    for t, pat in TASKS.items():
        d = corpus(pat, args.bytes)
        cut = int(len(d) * 0.9)
        train[t] = d[:cut]
        tests[t] = windows(d[cut:], 32, args.seq, gen)
    base = pretrain(base_data, args)
    base_bpb = bits_per_byte(base, tests)
    print(f"base model: {statistics.mean(base_bpb.values()):.3f} bits/byte ({time.time() - t0:.0f} s)", flush=True)

    names = [n for n in args.configs.split(",") if n]
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-smora-quality-") as scratch:
        seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
        for seed in seeds:
            for n in names:
                r = adapt(base, n, seed, train, tests, args, Path(scratch))
                results[n].append(r)
                extra = f", exported {statistics.mean(r['exported'].values()):.3f}" if "exported" in r else ""
                print(
                    f"seed {seed} {n}: {statistics.mean(r['routed'].values()):.3f}{extra} ({time.time() - t0:.0f} s)",
                    flush=True,
                )
    if args.dump:
        dump = {"seeds": seeds, "base": base_bpb, "results": results, "seconds": time.time() - t0}
        Path(args.dump).write_text(json.dumps(dump))
    report = render(args, base_bpb, results, time.time() - t0)
    print(report)
    if args.write:
        write(report)


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def render(args, base_bpb, results, seconds) -> str:
    tasks = list(TASKS)
    cmd = (
        "for s in 0 1 2; do nice -n 10 python benches/bench_smora_quality.py --seed-list $s "
        "--dump /tmp/q$s.json & done; wait; python benches/bench_smora_quality.py --from-json /tmp/q?.json --write"
    )
    lines = [
        "## SMoRA quality: rank experts vs MoE-LoRA vs LoRA (benches/bench_smora_quality.py)",
        "",
        f"Command: `{cmd}` ({seconds:.0f} s on this host's shared CPU cores, 1 torch thread).",
        "",
        f"Byte-level Llama (hidden 64, 2 layers, 4 heads) pretrained {args.base_steps} steps on Perl modules, "
        f"then adapted {args.steps} AdamW steps (lr {args.lr}, cosine) on a mix of {len(tasks)} tasks "
        f"({', '.join(tasks)}), {args.batch} windows of {args.seq} bytes per step; adapters on every linear "
        "layer, lora_alpha 16. Held-out loss in bits per byte (lower is better), mean over tasks; "
        f"± = std over {args.seeds} seeds. Base model without adapter: "
        f"{statistics.mean(base_bpb.values()):.3f}. Exported: `export_lora` (expected update over "
        f"{args.calib} calibration batches) loaded by `PeftModel.from_pretrained`; kept = share of the routed "
        "model's gain over the base that the export keeps.",
        "",
        "| adapter | active / total rank | trainable params | "
        + " | ".join(tasks)
        + " | mean | exported | kept | entropy |",
        "|---|---|---:|" + "---:|" * len(tasks) + "---:|---:|---:|---:|",
    ]
    base_mean = statistics.mean(base_bpb.values())
    means = {}
    for n, runs in results.items():
        rank, k, b, _ = CONFIGS[n]
        per_seed = [statistics.mean(r["routed"].values()) for r in runs]
        means[n] = statistics.mean(per_seed)
        per_task = [statistics.mean(r["routed"][t] for r in runs) for t in tasks]
        if "exported" in runs[0]:
            ex = [statistics.mean(r["exported"].values()) for r in runs]
            kept = [(base_mean - e) / (base_mean - s) for e, s in zip(ex, per_seed)]
            ent = statistics.mean(r["entropy"] for r in runs)
            tail = f"{_ms(ex)} | {statistics.mean(kept):.0%} | {ent:.2f}"
        else:
            tail = "(is a LoRA) | | "
        lines.append(
            f"| {n} | {k * b} / {rank} | {runs[0]['params']:,} | "
            + " | ".join(f"{v:.3f}" for v in per_task)
            + f" | {_ms(per_seed)} | {tail} |"
        )
    lines += ["", "Ordering by mean (best first): " + " < ".join(sorted(means, key=means.get)) + "."]
    return "\n".join(lines) + "\n"


def write(report: str) -> None:
    text = RESULTS.read_text()
    block = f"{START}\n{report}{END}"
    if START in text and END in text:
        pre, rest = text.split(START, 1)
        text = pre + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
