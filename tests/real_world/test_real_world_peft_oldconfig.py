"""A config as PEFT 0.2-0.4 wrote it: keys that no longer exist (``enable_lora: null``,
``merge_weights``), none of the newer ones (``use_rslora``, ``rank_pattern``, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft_oracle import check_mean_merge, check_round_trip

import rankwise as rw
from peft_factory import make_adapter, tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(9))


def old_config(r: int) -> dict:
    return {
        "base_model_name_or_path": "tiny-llama", "bias": "none", "enable_lora": None, "fan_in_fan_out": False,
        "inference_mode": True, "lora_alpha": 16, "lora_dropout": 0.05, "merge_weights": False,
        "modules_to_save": None, "peft_type": "LORA", "r": r, "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
    }  # fmt: skip


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("old")
    out = []
    for i in range(2):
        folder = make_adapter(root / f"o{i}", seed=i, r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        (folder / "adapter_config.json").write_text(json.dumps(old_config(4)))
        out.append(folder)
    return out


def test_old_config_reads_and_round_trips(two: list[Path], tmp_path: Path) -> None:
    adapter = check_round_trip(two[0], tmp_path, tiny_llama, INPUTS)
    assert {m.scaling for m in adapter.modules.values()} == {4.0}


def test_old_config_merges(two: list[Path], tmp_path: Path) -> None:
    merged = check_mean_merge(two, tmp_path, tiny_llama, INPUTS)
    assert merged.config["base_model_name_or_path"] == "tiny-llama"


def test_enable_lora_slices_are_refused(two: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "sliced"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((two[0] / "adapter_model.safetensors").read_bytes())
    (folder / "adapter_config.json").write_text(json.dumps(dict(old_config(4), enable_lora=[True, False, True])))
    with pytest.raises(rw.AdapterFormatError, match=r"enable_lora .* is not supported by rankwise"):
        rw.load_adapter(folder)
