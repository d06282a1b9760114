"""Embedding LoRA (``lora_embedding_A`` r × num_embeddings, ``lora_embedding_B`` dim × r) as rank
units, with the base embedding PEFT saves beside it (``save_embedding_layers``) as a full copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft_oracle import check_mean_merge, check_round_trip, peft_outputs

import rankwise as rw
from peft_factory import lora_layers, make_adapter, peft_model, tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))
EMB = "model.embed_tokens"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("emb")
    return [make_adapter(root / f"e{i}", seed=i, r=3, target_modules=["embed_tokens", "q_proj"]) for i in range(2)]


def test_embedding_factors_are_units_with_peft_delta(two: list[Path]) -> None:
    adapter = rw.load_adapter(two[0])
    info = adapter.modules[EMB]
    assert info.embedding and (info.rank, info.d_in, info.d_out) == (3, 64, 32)
    peft_delta = lora_layers(peft_model(two[0]))[EMB].get_delta_weight("a0")  # num_embeddings × dim
    np.testing.assert_allclose(adapter.delta(EMB).T, peft_delta.detach().numpy(), rtol=1e-6, atol=1e-7)
    units, ranks = rw.AdapterPool([adapter]).unit_matrix(EMB)
    assert ranks == [3] and units.shape == (3, 32 + 64)


def test_round_trip_with_the_saved_base_embedding(two: list[Path], tmp_path: Path) -> None:
    adapter = check_round_trip(two[0], tmp_path, tiny_llama, INPUTS)
    assert list(adapter.heads) == [f"{EMB}.base_layer.weight"]


def test_mean_merge_and_prune_load_in_peft(two: list[Path], tmp_path: Path) -> None:
    merged = check_mean_merge(two, tmp_path, tiny_llama, INPUTS, heads="mean")
    assert merged.modules[EMB].key_a.endswith(".lora_embedding_A")
    pruned = rw.prune(two[0], 3).save(tmp_path / "pruned")  # k = r: the same update, re-factored
    torch.testing.assert_close(
        peft_outputs(tiny_llama, pruned, INPUTS), peft_outputs(tiny_llama, two[0], INPUTS), rtol=1e-4, atol=1e-5
    )
