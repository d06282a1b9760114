"""Writes N synthetic PEFT LoRA adapter folders of a named model shape, fast.

    python benches/make_pool.py --shape llama-7b-qv --n 500 --rank 16 --dtype f16 \
        --out /tmp/rankwise-pools/llama7b-500

Each folder holds ``adapter_config.json`` (the fields PEFT writes) and
``adapter_model.safetensors`` (keys ``base_model.model.<module>.lora_A.weight``, A: r × d_in,
and ``.lora_B.weight``, B: d_out × r), written straight from numpy: no torch, no PEFT.

Speed: on a slow 2-core host numpy draws ~40 M normal floats/s and casts f32 -> f16 at ~70 M/s,
which would make a 4.2 G-value pool take minutes. So values are built as *bit patterns of the
target dtype* from raw generator output (~1 G values/s): random sign, a random exponent among 4
consecutive octaves around the wanted RMS, random mantissa. That is a symmetric, zero-mean,
log-uniform-ish distribution with no zeros or subnormals; it is not Gaussian, which no reader
or merge here depends on. Adapters are generated in worker processes, one seeded stream per
adapter (same bytes for any worker count).

``--clustered K``: per module, K shared prototype units (b, a) are drawn once (seeded by the
module, so shared by all adapters). Each unit of an adapter is one prototype (r of the K, without
replacement while r <= K) transformed by the symmetries of a rank unit, which leave b·aᵀ
unchanged: a random sign (both b and a flipped) and a random scale 2^e, e in {-1, 0, 1}
(b times 2^e, a times 2^-e); then multiplicative noise: the low mantissa bits are replaced by
random ones, a relative perturbation below ``--noise`` (default 0.1). Canonical forms of the
units (rankwise's ``canonicalize``) fall back onto K tight clusters; raw units form up to 6K.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KEY_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture base model and the projections its adapters target."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    targets: tuple[str, ...]
    vocab: int = 64

    def proj_dims(self, proj: str) -> tuple[int, int]:
        """(d_out, d_in) of one projection, as nn.Linear stores it."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        return {
            "q_proj": (h, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, h),
            "gate_proj": (self.intermediate, h),
            "up_proj": (self.intermediate, h),
            "down_proj": (h, self.intermediate),
        }[proj]

    def modules(self) -> list[tuple[str, int, int]]:
        """``(module name as PEFT names it, d_out, d_in)`` in model order."""
        out = []
        for i in range(self.layers):
            for proj in ALL_LINEAR:
                if proj in self.targets:
                    part = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                    out.append((f"model.layers.{i}.{part}.{proj}", *self.proj_dims(proj)))
        return out

    def llama_config(self) -> dict[str, Any]:
        """Keyword arguments of ``transformers.LlamaConfig`` for the base model."""
        return dict(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=64,
        )

    def adapter_values(self, rank: int) -> int:
        return sum(rank * (o + i) for _, o, i in self.modules())


SHAPES: dict[str, Shape] = {
    # tests/peft_factory.tiny_llama(): hidden 32, 2 layers, 4 heads, 2 kv heads, all 7 projections.
    "tiny": Shape("tiny", 32, 64, 2, 4, 2, ALL_LINEAR),
    "small": Shape("small", 1024, 2816, 8, 16, 16, ("q_proj", "v_proj"), vocab=1024),
    "llama-7b-qv": Shape("llama-7b-qv", 4096, 11008, 32, 32, 32, ("q_proj", "v_proj"), vocab=32000),
}


# ---------------------------------------------------------------------------------- bit patterns
@dataclass(frozen=True)
class _Bits:
    st_name: str  # safetensors dtype name
    utype: type  # unsigned integer type of the same width
    mant: int  # mantissa bits
    bias: int  # exponent bias
    sign: int  # sign-bit mask


_BITS = {
    "f16": _Bits("F16", np.uint16, 10, 15, 0x8000),
    "bf16": _Bits("BF16", np.uint16, 7, 127, 0x8000),
    "f32": _Bits("F32", np.uint32, 23, 127, 0x8000_0000),
}
_DTYPE_ALIASES = {"float16": "f16", "fp16": "f16", "half": "f16", "bfloat16": "bf16", "float32": "f32", "fp32": "f32"}


def _norm_dtype(dtype: str) -> str:
    d = str(dtype).lower().removeprefix("torch.")
    d = _DTYPE_ALIASES.get(d, d)
    if d not in _BITS:
        raise ValueError(f"dtype must be one of f32, f16, bf16; got {dtype!r}")
    return d


# Four octaves [2^E, 2^(E+4)), uniform inside each: RMS = 2^E · sqrt(7/3 · (1+4+16+64)/4) ≈ 2^E · 7.04.
_RMS_PER_2E = math.sqrt(7 / 3 * 85 / 4)


def _raw(rng: np.random.Generator, n: int, bits: _Bits) -> np.ndarray:
    width = np.dtype(bits.utype).itemsize
    words = -(-n * width // 8)
    return rng.bit_generator.random_raw(words).view(bits.utype)[:n]


def _random_values(rng: np.random.Generator, n: int, bits: _Bits, rms: float) -> np.ndarray:
    """n values of the dtype (as bit patterns), symmetric, RMS within √2 of ``rms``."""
    e = bits.bias + round(math.log2(rms / _RMS_PER_2E))
    if not 2 <= e <= 2 ** (8 * np.dtype(bits.utype).itemsize - 1 - bits.mant) - 6:
        raise ValueError(f"RMS {rms} is out of range for {bits.st_name}")
    keep = bits.utype(bits.sign | ((4 << bits.mant) - 1))  # sign, 2 exponent bits, mantissa
    v = _raw(rng, n, bits)
    v &= keep
    v += bits.utype(e << bits.mant)
    return v


def _noise_mask(bits: _Bits, noise: float) -> int:
    """Low mantissa bits to randomise for a relative perturbation below ``noise``."""
    if noise <= 0:
        return 0
    nb = min(bits.mant, max(0, bits.mant + math.floor(math.log2(noise))))
    return (1 << nb) - 1


def _rms(d_in: int) -> tuple[float, float]:
    """RMS of A (Kaiming-like, 1/√d_in) and of B (trained LoRA-B-like)."""
    return 1.0 / math.sqrt(d_in), 0.02


# ------------------------------------------------------------------------------------- writing
def _write_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]]) -> int:
    """Writes ``(key, dtype name, shape, little-endian bit array)``; keys sorted. Returns bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dt, shape, arr in sorted(tensors, key=lambda t: t[0]):
        header[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _, _, _, arr in sorted(tensors, key=lambda t: t[0]):
            f.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return 8 + len(h) + offset


def adapter_config(shape: Shape, rank: int, alpha: float) -> dict[str, Any]:
    """The config PEFT writes for a LoraConfig(r, lora_alpha, target_modules, CAUSAL_LM)."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": f"rankwise-synthetic/{shape.name}",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted(shape.targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


_PROTO_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}


def _prototypes(seed: int, m: int, k: int, d_out: int, d_in: int, bits: _Bits) -> tuple[np.ndarray, np.ndarray]:
    key = (seed, m, k, d_out, d_in, bits.st_name)
    if key not in _PROTO_CACHE:
        rng = np.random.default_rng([seed, 0x5EED, m])
        rms_a, rms_b = _rms(d_in)
        pb = _random_values(rng, k * d_out, bits, rms_b).reshape(k, d_out)
        pa = _random_values(rng, k * d_in, bits, rms_a).reshape(k, d_in)
        _PROTO_CACHE[key] = (pb, pa)
    return _PROTO_CACHE[key]


def _make_one(job: dict[str, Any]) -> int:
    """Writes adapter ``job['j']``; returns the bytes written."""
    shape: Shape = job["shape"]
    bits = _BITS[job["dtype"]]
    r, alpha, j, seed, k = job["rank"], job["alpha"], job["j"], job["seed"], job["clustered"]
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, j])
    tensors = []
    mask = bits.utype(_noise_mask(bits, job["noise"]))
    for m, (name, d_out, d_in) in enumerate(shape.modules()):
        if k is None:
            rms_a, rms_b = _rms(d_in)
            a = _random_values(rng, r * d_in, bits, rms_a).reshape(r, d_in)
            b = _random_values(rng, d_out * r, bits, rms_b).reshape(d_out, r)
        else:
            pb, pa = _prototypes(seed, m, k, d_out, d_in, bits)
            idx = rng.choice(k, size=r, replace=r > k)
            flip = rng.integers(0, 2, size=r).astype(bits.utype) * bits.utype(bits.sign)
            e = rng.integers(-1, 2, size=r)
            # Exponent ± e by modular integer addition (fields stay in range by construction).
            mod = 1 << (8 * np.dtype(bits.utype).itemsize)
            add_b = ((e << bits.mant) % mod).astype(bits.utype)
            add_a = ((-e << bits.mant) % mod).astype(bits.utype)
            a = pa[idx]
            a += add_a[:, None]
            a ^= flip[:, None]
            bt = pb[idx]
            bt += add_b[:, None]
            bt ^= flip[:, None]
            if mask:
                a ^= _raw(rng, a.size, bits).reshape(a.shape) & mask
                bt ^= _raw(rng, bt.size, bits).reshape(bt.shape) & mask
            b = np.ascontiguousarray(bt.T)
        ka, kb = (f"{KEY_PREFIX}{name}.lora_A.weight", f"{KEY_PREFIX}{name}.lora_B.weight")
        tensors.append((ka, bits.st_name, (r, d_in), a))
        tensors.append((kb, bits.st_name, (d_out, r), b))
    nbytes = _write_safetensors(folder / "adapter_model.safetensors", tensors)
    cfg = adapter_config(shape, r, alpha)
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return nbytes


def make_pool(
    out: str | os.PathLike[str],
    n: int,
    shape: str | Shape = "tiny",
    *,
    rank: int | list[int] = 16,
    dtype: str = "f16",
    alpha: float | None = None,
    seed: int = 0,
    clustered: int | None = None,
    noise: float = 0.1,
    workers: int | None = None,
) -> list[Path]:
    """Writes ``n`` adapters into ``out/adapter_0000`` ...; returns their folders in order.

    ``rank``: one rank, or a list cycled over the adapters (mixed ranks). ``alpha``: lora_alpha
    of every adapter (default 2·r). ``clustered``: K prototype units per module (see the
    module docstring). ``workers``: processes (default: the CPU count; small pools run inline).
    """
    shp = SHAPES[shape] if isinstance(shape, str) else shape
    ranks = [rank] if isinstance(rank, int) else list(rank)
    if not ranks or any(int(x) < 1 for x in ranks):
        raise ValueError(f"ranks must be positive, got {rank!r}")
    if clustered is not None and clustered < 1:
        raise ValueError(f"clustered K must be positive, got {clustered}")
    dt = _norm_dtype(dtype)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for j in range(n):
        r = int(ranks[j % len(ranks)])
        jobs.append(
            dict(
                shape=shp, dtype=dt, rank=r, alpha=float(alpha) if alpha is not None else 2.0 * r,
                j=j, seed=seed, clustered=clustered, noise=noise, folder=str(root / f"adapter_{j:04d}"),
            )
        )  # fmt: skip
    total = sum(shp.adapter_values(jb["rank"]) for jb in jobs) * np.dtype(_BITS[dt].utype).itemsize
    nw = workers if workers is not None else (os.cpu_count() or 1)
    nw = max(1, min(nw, n))
    if nw == 1 or total < 32 << 20:
        for jb in jobs:
            _make_one(jb)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
        with ProcessPoolExecutor(nw, mp_context=ctx) as ex:
            for _ in ex.map(_make_one, jobs, chunksize=max(1, n // (8 * nw))):
                pass
    return [Path(jb["folder"]) for jb in jobs]


def _parse_ranks(s: str) -> int | list[int]:
    parts = [int(x) for x in s.split(",") if x.strip()]
    return parts[0] if len(parts) == 1 else parts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--n", type=int, default=8, help="number of adapters")
    p.add_argument("--rank", type=_parse_ranks, default=16, help="a rank, or a comma list cycled over adapters")
    p.add_argument("--dtype", default="f16", choices=sorted(_BITS))
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2·r)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clustered", type=int, default=None, metavar="K", help="K prototype units per module")
    p.add_argument("--noise", type=float, default=0.1, help="relative noise around prototypes (--clustered)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--clean", action="store_true", help="delete --out first")
    a = p.parse_args(argv)
    if a.clean and a.out.exists():
        shutil.rmtree(a.out)
    t0 = time.perf_counter()
    paths = make_pool(
        a.out, a.n, a.shape, rank=a.rank, dtype=a.dtype, alpha=a.alpha, seed=a.seed,
        clustered=a.clustered, noise=a.noise, workers=a.workers,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    size = sum((q / "adapter_model.safetensors").stat().st_size for q in paths)
    print(
        f"wrote {len(paths)} adapters ({a.shape}, rank {a.rank}, {a.dtype}) to {a.out}: "
        f"{size / 1e9:.2f} GB in {dt:.1f} s ({size / 1e9 / dt:.2f} GB/s)"
    )


if __name__ == "__main__":
    main()
