"""SMoRA experts initialised from a pool of LoRA adapters through a LoRA-LEGO merge.

LEGO clusters the pool's rank units (b_i, a_i) into k = rank centroids per module; each centroid
becomes one rank expert of the SMoRA layer, so many adapters become one routed rank-wise mixture.
The factors are placed so that with every rank active and unit gates the layer's update equals
the merged ΔW = B A: lora_A = A, lora_B = B / scale (config.scale). With top-k routing a token
sees only its k selected experts, with gates summing to k.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import IncompatibleAdaptersError
from .config import SMoRAConfig
from .inject import inject_smora, smora_config, smora_layers


def from_pool(
    model: nn.Module,
    pool: Any,
    config: SMoRAConfig,
    *,
    seed: int = 0,
    **merge_options: Any,
) -> nn.Module:
    """Injects SMoRA into ``model`` (unless already done) and initialises each layer's rank
    experts from ``rankwise.merge(pool, method="lego", rank=config.rank, seed=seed,
    **merge_options)``. ``pool``: an ``rw.AdapterPool``, a list of PEFT adapter folders, or an
    already merged ``rw.Adapter`` of rank ``config.rank``. Every module of the merge must be an
    SMoRA layer of the model (else ``IncompatibleAdaptersError``); SMoRA layers the pool does not
    cover keep their random init (with a warning). Returns the model."""
    import rankwise as rw  # the compiled core is needed here only

    if hasattr(pool, "factors") and hasattr(pool, "modules"):
        merged = pool  # already merged
    else:
        if isinstance(pool, (str, os.PathLike)):
            pool = rw.AdapterPool.load([pool])
        elif isinstance(pool, (list, tuple)):
            pool = rw.AdapterPool.load(list(pool))
        merged = rw.merge(pool, method="lego", rank=config.rank, seed=seed, **merge_options)

    if not smora_layers(model):
        inject_smora(model, config)
    layers = smora_layers(model)
    scale = smora_config(model).scale
    names = list(merged.modules)
    missing = [n for n in names if n not in layers]
    if missing:
        raise IncompatibleAdaptersError(
            f"from_pool: pool module {missing[0]!r} is not an SMoRA layer of the model "
            f"({len(missing)} of {len(names)} pool modules are not; SMoRA layers include "
            f"{sorted(layers)[:3]}); add it to target_modules"
        )
    uncovered = sorted(set(layers) - set(names))
    if uncovered:
        warnings.warn(
            f"from_pool: {len(uncovered)} SMoRA layers have no pool adapter and keep their "
            f"random init (e.g. {uncovered[0]!r})",
            stacklevel=2,
        )
    with torch.no_grad():
        for n in names:
            m = layers[n]
            a, b = merged.factors(n, folded=True)
            a_t = torch.as_tensor(a)
            b_t = torch.as_tensor(b)
            want_a, want_b = (m.rank, m.in_features), (m.out_features, m.rank)
            if tuple(a_t.shape) != want_a or tuple(b_t.shape) != want_b:
                raise IncompatibleAdaptersError(
                    f"from_pool: module {n!r}: merged factors have shapes A {tuple(a_t.shape)}, "
                    f"B {tuple(b_t.shape)}; the SMoRA layer needs A {want_a}, B {want_b}"
                )
            m.lora_A.copy_(a_t.to(m.lora_A.device, m.lora_A.dtype))
            m.lora_B.copy_((b_t.double() / scale).to(m.lora_B.device, m.lora_B.dtype))
    return model
