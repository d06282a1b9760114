"""GPT-2: Conv1D modules (fan_in_fan_out: PEFT adds the transpose of B @ A), two kinds of module
named ``c_proj`` (attention and MLP), and adapters that name their base model differently."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft_oracle import check_mean_merge, check_round_trip

import rankwise as rw

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(7))


def base() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()


def make(folder: Path, seed: int, base_name: str) -> Path:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
                     init_lora_weights=False)  # fmt: skip
    pm = get_peft_model(base(), cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    pm.save_pretrained(str(folder))
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), base_model_name_or_path=base_name)))
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gpt2")
    return [make(root / f"g{i}", i, name) for i, name in enumerate(["gpt2", "openai-community/gpt2"])]


def test_round_trip_and_full_names_of_colliding_modules(
    two: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_round_trip(two[0], tmp_path, base, INPUTS)
    labels = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith(("c_", "transf"))]
    assert labels == ["c_attn", "transformer.h.*.attn.c_proj", "c_fc", "transformer.h.*.mlp.c_proj"]


def test_differing_base_names_warn_and_the_merge_names_none(two: list[Path], tmp_path: Path) -> None:
    with pytest.warns(rw.BaseModelWarning, match=r"2 base models \(gpt2, openai-community/gpt2\)"):
        merged = check_mean_merge(two, tmp_path, base, INPUTS)
    assert merged.config["base_model_name_or_path"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = rw.merge([two[0], two[0]], "cat")
    assert same.config["base_model_name_or_path"] == "gpt2"
