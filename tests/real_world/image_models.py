"""Tiny diffusers UNet / CLIP text encoder built from configs (nothing downloaded), LoRA files of
them in the kohya and diffusers layouts, and diffusers itself as the loader under test."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# diffusers 0.42 keys a kohya attention module's alpha under a name PEFT does not match (it warns
# and uses the most common alpha), so attention modules share one alpha, != rank; the others vary.
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


def tiny_text_encoder() -> CLIPTextModel:
    torch.manual_seed(1)
    cfg = CLIPTextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    return CLIPTextModel(cfg).eval()


def targets(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    """The Linear / Conv2d modules whose name ends in one of ``names``."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and any(n == t or n.endswith("." + t) for t in names)
    }


def kohya_file(path: Path, unet: torch.nn.Module, te: torch.nn.Module, seed: int, rank: int = 4) -> Path:
    """A kohya file written from sd-scripts' conventions: ``lora_unet_``/``lora_te_`` + the module
    path with ``_`` for ``.``; conv modules get a LoCon down kernel of the conv's kernel size and
    a 1×1 up; alpha differs from the rank (and between the non-attention modules)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for prefix, model, names in (("lora_unet", unet, UNET_TARGETS), ("lora_te", te, TE_TARGETS)):
        for i, (name, m) in enumerate(targets(model, names).items()):
            stem = f"{prefix}_{name.replace('.', '_')}"
            if isinstance(m, torch.nn.Conv2d):
                down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=g) * 0.3
                up = torch.randn(m.out_channels, rank, 1, 1, generator=g) * 0.3
            else:
                down = torch.randn(rank, m.in_features, generator=g) * 0.3
                up = torch.randn(m.out_features, rank, generator=g) * 0.3
            sd[stem + ".lora_down.weight"] = down
            sd[stem + ".lora_up.weight"] = up
            alpha = 2.0 if name.endswith(ATTENTION) else float(1 + 2 * (i % 2))
            sd[stem + ".alpha"] = torch.tensor(alpha)
    save_file(sd, str(path), metadata={"ss_network_dim": str(rank), "ss_network_module": "networks.lora"})
    return path


def unet_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "sample": torch.randn(2, 4, 8, 8, generator=g),
        "timestep": torch.tensor(10),
        "encoder_hidden_states": torch.randn(2, 5, 16, generator=g),
    }


TOKENS = torch.tensor([[1, 5, 9, 3, 2, 7]])


@torch.no_grad()
def outputs(unet: torch.nn.Module, te: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    u = unet(**unet_inputs()).sample.numpy()
    t = te(TOKENS).last_hidden_state.numpy()
    return u, t


def diffusers_outputs(file: str | Path, unet: torch.nn.Module, te: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Loads a LoRA file with diffusers into copies of the models and runs them: what
    ``load_lora_weights`` does (lora_state_dict with its metadata, load_lora_into_unet /
    _text_encoder), without a pipeline."""
    unet, te = copy.deepcopy(unet), copy.deepcopy(te)
    state_dict, alphas, meta = Loader.lora_state_dict(str(file), return_lora_metadata=True)
    Loader.load_lora_into_unet(state_dict, alphas, unet, adapter_name="x", metadata=meta)
    if any(k.startswith("text_encoder.") for k in state_dict):
        Loader.load_lora_into_text_encoder(
            state_dict, alphas, te, prefix="text_encoder", adapter_name="x", metadata=meta
        )
    return outputs(unet, te)


def reference_outputs(
    deltas: dict[str, np.ndarray], unet: torch.nn.Module, te: torch.nn.Module
) -> tuple[np.ndarray, np.ndarray]:
    """numpy reference: each module's (out × in·kh·kw) delta added to a copy of its weight."""
    unet, te = copy.deepcopy(unet), copy.deepcopy(te)
    models: dict[str, Any] = {"unet": unet, "text_encoder": te}
    with torch.no_grad():
        for name, d in deltas.items():
            comp, _, path = name.partition(".")
            w = models[comp].get_submodule(path).weight
            w += torch.from_numpy(d.astype(np.float32)).reshape(w.shape)
    return outputs(unet, te)


def diffusers_folder(path: Path, unet: torch.nn.Module, te: torch.nn.Module, seed: int) -> Path:
    """A LoRA folder written by diffusers' own ``save_lora_weights`` from PEFT adapters on copies
    of the models (random B, alpha != r, a rank pattern on the convs), with their configs as
    ``lora_adapter_metadata``."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet, te = copy.deepcopy(unet), copy.deepcopy(te)
    torch.manual_seed(seed)
    ucfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=UNET_TARGETS, rank_pattern={"conv1": 2}, init_lora_weights=False
    )
    tcfg = LoraConfig(r=4, lora_alpha=2, target_modules=TE_TARGETS, init_lora_weights=False)
    unet.add_adapter(ucfg)
    te = inject_adapter_in_model(tcfg, te)  # transformers' add_adapter wants a newer PEFT
    Loader.save_lora_weights(
        str(path),
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=ucfg.to_dict(),
        text_encoder_lora_adapter_metadata=tcfg.to_dict(),
    )
    return path
