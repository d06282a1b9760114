"""Adapter folders written byte by byte (a safetensors header and data as given), and small
pools of random adapters: the inputs of the bad-input and failure-mode tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from rankwise.adapter import Adapter

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}


def write_raw(folder: Path, header: dict, data: bytes, config: dict | None = None) -> Path:
    """An adapter folder whose safetensors file has exactly this header and data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or CONFIG))
    h = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data)
    return folder


def good_header(dtype: str = "F32", r: int = 2, d: int = 4) -> tuple[dict, bytes]:
    size = {"F32": 4, "F16": 2}[dtype]
    n = r * d * size
    header = {
        A_KEY: {"dtype": dtype, "shape": [r, d], "data_offsets": [0, n]},
        B_KEY: {"dtype": dtype, "shape": [d, r], "data_offsets": [n, 2 * n]},
    }
    return header, np.ones(2 * r * d, dtype=np.float32 if dtype == "F32" else np.float16).tobytes()


def write_pool(folder: Path, n: int, *, modules: int, d: int, rank: int, seed: int = 0) -> list[Path]:
    """n float16 adapters of random factors (d × d modules of the given rank), saved under folder."""
    rng = np.random.default_rng(seed)
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(modules)]
    out = []
    for j in range(n):
        factors = {
            m: (rng.standard_normal((rank, d), dtype=np.float32), rng.standard_normal((d, rank), dtype=np.float32))
            for m in names
        }
        out.append(
            Adapter.from_factors(factors, base_config={"target_modules": ["q_proj"]}, dtype="F16").save(
                folder / f"a{j:02d}"
            )
        )
    return out


def put_nan(folder: Path, module: int, part: str) -> tuple[Path, str]:
    """Writes a float16 NaN over the first value of module ``module``'s ``part`` ("a" or "b")
    factor in a write_pool adapter's file, in place; returns (file, tensor key)."""
    target = folder / "adapter_model.safetensors"
    adapter = Adapter.load(folder)
    info = adapter.module(list(adapter.modules)[module])
    del adapter  # its mapping of the file, before the file is rewritten
    key = info.key_a if part == "a" else info.key_b
    raw = bytearray(target.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    start = 8 + header_len + json.loads(raw[8 : 8 + header_len])[key]["data_offsets"][0]
    raw[start : start + 2] = np.array([np.nan], dtype=np.float16).tobytes()
    target.write_bytes(bytes(raw))
    return target, key
