"""The language-model pool of bench_quality (issue 14): a tiny byte-level ``LlamaForCausalLM``
trained from scratch here on text already on the machine (nothing downloaded), and PEFT LoRAs
(r = 8, every linear layer of the blocks) one per text domain and seed.

Domains: Python standard-library sources, the licence texts of /usr/share/common-licenses,
Debian changelogs and man-page sources (gzip) from /usr/share. The base sees a mix of all four;
each adapter fine-tunes on one. Score per domain: the share of the loss gap the merged model
closes, (L_base − L_merged) / (L_base − L_own), L_own the mean over that domain's adapters; a
pool's score is the mean over domains (0: the base, 1: as good as the own adapters, < 0: worse
than the base). Base and adapters are cached under the bench's --cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .merging import Config, Result, norm_ratio, rw_weights

SOURCES = {
    "python": ("/usr/lib/python3.11", "*.py"),
    "licenses": ("/usr/share/common-licenses", "*"),
    "changelog": ("/usr/share/doc", "changelog.Debian.gz"),
    "man": ("/usr/share/man/man1", "*.1.gz"),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class LmRecipe:
    bytes_per_domain: int = 300_000
    seq: int = 128
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 176
    base_steps: int = 400
    lora_steps: int = 120
    batch: int = 16
    base_lr: float = 3e-3
    lora_lr: float = 3e-3
    rank: int = 8
    seeds: int = 2
    eval_seqs: int = 48

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def read_domain(name: str, n_bytes: int) -> np.ndarray:
    """The first ``n_bytes`` of the domain's files in sorted path order (decompressed), as bytes."""
    root, pattern = SOURCES[name]
    out, total = [], 0
    for path in sorted(Path(root).rglob(pattern)):
        if not path.is_file():
            continue
        try:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        out.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return np.frombuffer(b"".join(out)[:n_bytes], dtype=np.uint8).astype(np.int64)


class LmWorkspace:
    """Text, base model and adapters of one recipe, cached under ``root``."""

    def __init__(self, root: Path, recipe: LmRecipe = LmRecipe()) -> None:
        self.r = recipe
        self.root = root / f"lm-{recipe.key()}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.text = {}
        for d in SOURCES:
            data = read_domain(d, recipe.bytes_per_domain)
            cut = int(0.9 * len(data))
            self.text[d] = (data[:cut], data[cut:])
        self.trained = 0
        self._base = None

    def batch(self, data: np.ndarray, rng: np.random.Generator):
        import torch

        idx = rng.integers(0, len(data) - self.r.seq - 1, size=self.r.batch)
        return torch.from_numpy(np.stack([data[i : i + self.r.seq] for i in idx]))

    def _fit(self, model, params, streams: list[np.ndarray], steps: int, lr: float, seed: int) -> None:
        import torch

        rng = np.random.default_rng(seed)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            x = self.batch(streams[int(rng.integers(len(streams)))], rng)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()

    def base(self):
        """The trained base (a fresh copy on every call)."""
        import copy

        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        if self._base is None:
            path = self.root / "base"
            if (path / "config.json").exists():
                model = LlamaForCausalLM.from_pretrained(str(path))
            else:
                torch.manual_seed(0)
                cfg = LlamaConfig(
                    vocab_size=256, hidden_size=self.r.hidden, intermediate_size=self.r.intermediate,
                    num_hidden_layers=self.r.layers, num_attention_heads=self.r.heads,
                    num_key_value_heads=self.r.heads, max_position_embeddings=self.r.seq,
                    bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
                )  # fmt: skip
                model = LlamaForCausalLM(cfg)
                streams = [tr for tr, _ in self.text.values()]
                self._fit(model, model.parameters(), streams, self.r.base_steps, self.r.base_lr, seed=1)
                model.save_pretrained(str(path))
                self.trained += 1
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._base = model
        return copy.deepcopy(self._base)

    def adapter(self, domain: str, seed: int) -> Path:
        import torch
        from peft import LoraConfig, get_peft_model

        out = self.root / "adapters" / f"{domain}-s{seed}"
        if (out / "adapter_config.json").exists():
            return out
        torch.manual_seed(100 + seed)
        cfg = LoraConfig(r=self.r.rank, lora_alpha=2 * self.r.rank, lora_dropout=0.0, target_modules=TARGETS)
        model = get_peft_model(self.base(), cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        self._fit(model, params, [self.text[domain][0]], self.r.lora_steps, self.r.lora_lr, seed=1000 + seed)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tmp.rename(out)
        self.trained += 1
        return out

    def losses(self, model) -> dict[str, float]:
        """Mean next-byte loss per domain on fixed held-out windows."""
        import torch

        out = {}
        with torch.no_grad():
            for d, (_, test) in self.text.items():
                starts = np.linspace(0, len(test) - self.r.seq - 1, self.r.eval_seqs).astype(int)
                x = torch.from_numpy(np.stack([test[i : i + self.r.seq] for i in starts]))
                out[d] = float(model(input_ids=x, labels=x).loss)
        return out


def lm_configs(r: int, n_units: int) -> list[Config]:
    """The settings the issue-14 table reads, plus the other assemblies (labels as in merging)."""
    out = [Config("base model (no adapter)", "ref", "base"), Config("cat w=1/N", "rw", "cat", (), "1/N")]
    for kname, k in (("r", r), ("2r", 2 * r)):
        out.append(Config(f"svd w=1/N rank={kname}", "rw", "svd", (("svd_rank", k),), "1/N"))
    for assembly, w in (("projection-norm", "1/N"), ("projection", "1/N"), ("paper", "1")):
        for kname, k in (("r", r), ("2r", 2 * r), ("4r", 4 * r)):
            opts = (("rank", min(k, n_units)), ("assembly", assembly))
            out.append(Config(f"lego {assembly} k={kname}", "lego", "lego", opts, w, True))
    legacy = (("rank", 2 * r), ("assembly", "legacy"), ("features", "normalized"), ("canonicalize", True))
    out.append(Config("lego norm canon mass+param k=2r", "lego", "lego", legacy, "1", True))
    return out


def run_lm_pool(cache: Path, seeds: list[int]) -> tuple[list[Result], int, str]:
    """Merges and scores the LM pool: the results (pool "lm"), models trained, a description."""
    from peft import PeftModel

    import rankwise as rw

    ws = LmWorkspace(cache)
    paths = {(d, s): ws.adapter(d, s) for d in SOURCES for s in range(ws.r.seeds)}
    base_loss = ws.losses(ws.base())
    own: dict[str, list[float]] = {d: [] for d in SOURCES}
    for (d, _), path in paths.items():
        own[d].append(ws.losses(PeftModel.from_pretrained(ws.base(), str(path)))[d])
    gap = {d: base_loss[d] - float(np.mean(own[d])) for d in SOURCES}
    pool = rw.AdapterPool.load(list(paths.values()))
    n = len(pool)
    weights = {"1": [1.0] * n, "1/N": [1.0 / n] * n}
    n_units = min(sum(pool.ranks(m)) for m in pool.modules)
    results = []
    tmp = ws.root / "merged"
    for cfg in lm_configs(ws.r.rank, n_units):
        for seed in seeds if cfg.seeded else seeds[:1]:
            t0 = time.perf_counter()
            ratio = None
            if cfg.family == "ref":
                loss = base_loss
            else:
                opts = cfg.opts() | ({"seed": seed} if cfg.seeded else {})
                kw = rw_weights(cfg, weights[cfg.weights])
                merged = rw.merge(pool, cfg.method, **kw, **opts)
                ratio = norm_ratio(pool, merged, kw["weights"]) if cfg.method == "lego" else None
                out = merged.save(tmp)
                loss = ws.losses(PeftModel.from_pretrained(ws.base(), str(out)))
                shutil.rmtree(out, ignore_errors=True)
            closed = {d: (base_loss[d] - loss[d]) / gap[d] for d in SOURCES}
            results.append(Result("lm", cfg, seed, loss, closed, time.perf_counter() - t0, None, ratio))
    desc = (
        f"`lm`: byte-level LlamaForCausalLM (hidden {ws.r.hidden}, {ws.r.layers} layers) trained here on "
        f"{', '.join(SOURCES)}; {n} LoRAs r={ws.r.rank} on {'/'.join(TARGETS)} ({ws.r.seeds} seeds per domain); "
        "score: share of the loss gap closed, base loss "
        + ", ".join(f"{d} {base_loss[d]:.3f}→{np.mean(own[d]):.3f}" for d in SOURCES)
    )
    return results, ws.trained, desc
