"""Tiny models and real PEFT adapters for the tests: nothing is downloaded.

``make_adapter`` trains nothing; it builds a PEFT LoRA on a tiny Llama with random (non-zero)
A and B, so that every module's delta is non-trivial, and saves it with ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tiny_llama(seed: int = 0, *, hidden: int = 32, layers: int = 2) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def make_adapter(
    folder: Path,
    *,
    seed: int = 0,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: list[str] | str | None = None,
    dtype: str = "F32",
    model_seed: int = 0,
    scale: float = 0.2,
    **config: Any,
) -> Path:
    """Saves a PEFT LoRA adapter for ``tiny_llama(model_seed)`` with random factors."""
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(model_seed)
    lcfg = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=target_modules or ALL_LINEAR,
        init_lora_weights=False,
        **config,
    )
    pm = get_peft_model(model, lcfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    pm = pm.to(TORCH_DTYPES[dtype])
    pm.save_pretrained(str(folder))
    return folder


def peft_model(folder: Path | list[Path], *, model_seed: int = 0, dtype: str = "F32") -> Any:
    """The tiny base model with the adapter(s) at ``folder`` loaded by PEFT itself."""
    from peft import PeftModel

    folders = folder if isinstance(folder, list) else [folder]
    base = tiny_llama(model_seed).to(TORCH_DTYPES[dtype])
    pm = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="a0")
    for i, f in enumerate(folders[1:], start=1):
        pm.load_adapter(str(f), adapter_name=f"a{i}")
    return pm.eval()


def lora_layers(pm: Any) -> dict[str, Any]:
    """PEFT's LoRA layers keyed by the module name rankwise uses (relative to the base model)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer):
            out[name.removeprefix("base_model.model.")] = mod
    return out


def logits(pm: Any, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return pm(input_ids=ids).logits.float()
