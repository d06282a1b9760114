"""The checks every real-world adapter goes through, with PEFT as the oracle: the copy rankwise
writes holds the same tensors bit for bit and gives PEFT the same outputs; a merge loaded by PEFT
gives the outputs of the exactly averaged merged models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import rankwise as rw
from rankwise.cli import main

WEIGHTS = "adapter_model.safetensors"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS))


def peft_outputs(make_base: Callable[[], torch.nn.Module], folder: Path, inputs: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    pm = PeftModel.from_pretrained(make_base(), str(folder)).eval()
    with torch.no_grad():
        return pm(input_ids=inputs).logits


def merged_base(make_base: Callable[[], torch.nn.Module], folder: Path) -> dict[str, torch.Tensor]:
    """The base model's weights with the adapter merged in by PEFT (heads replaced)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(make_base(), str(folder)).merge_and_unload().state_dict()


def check_round_trip(folder: Path, tmp: Path, make_base: Callable[[], torch.nn.Module], inputs: torch.Tensor) -> Any:
    """Load, inspect (exit 0), save: every tensor bit-identical, PEFT outputs identical."""
    adapter = rw.load_adapter(folder)
    assert main(["inspect", str(folder)]) == 0
    copy = adapter.save(tmp / f"{folder.name}-copy")
    a, b = tensors(folder), tensors(copy)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(peft_outputs(make_base, folder, inputs), peft_outputs(make_base, copy, inputs))
    return adapter


def check_mean_merge(
    folders: list[Path], tmp: Path, make_base: Callable[[], torch.nn.Module], inputs: torch.Tensor, **kw: Any
) -> rw.Adapter:
    """rankwise's exact mean (cat, w = 1/N, heads mean) loaded by PEFT against the mean of the
    PEFT-merged models' weights (the same base, so the mean of the merged weights is the base plus
    the mean update, and the mean head)."""
    n = len(folders)
    merged = rw.merge(folders, "cat", weights=[1 / n] * n, **kw)
    out = merged.save(tmp / "merged")
    states = [merged_base(make_base, f) for f in folders]
    ref_model = make_base()
    ref_model.load_state_dict({k: sum(s[k] for s in states) / n for k in states[0]})
    with torch.no_grad():
        ref = ref_model.eval()(input_ids=inputs).logits
    got = peft_outputs(make_base, out, inputs)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    return merged
