"""Sequence-classification adapters (PEFT task_type SEQ_CLS): LoRA factors plus the full-copy
``score`` head PEFT saves from ``modules_to_save``, and the older file that holds the head
without listing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft_oracle import check_mean_merge, check_round_trip, tensors
from safetensors.torch import save_file

import rankwise as rw

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(3))


def base() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    return LlamaForSequenceClassification(cfg).eval()


def make(folder: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(base(), LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    pm.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("seqcls")
    return [make(root / f"cls{i}", i) for i in range(2)]


def test_heads_are_listed_and_carried_bit_identically(
    two: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = check_round_trip(two[0], tmp_path, base, INPUTS)
    assert list(adapter.heads) == ["score.weight"]
    assert adapter.heads["score.weight"].shape == (3, 32)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("score.weight"))
    assert row.split() == ["score.weight", "3×32", "F32", "full", "copy", "96"]


def test_prune_keeps_the_head(two: list[Path]) -> None:
    pruned = rw.prune(two[0], 2)
    assert torch.equal(torch.from_numpy(pruned.head("score.weight")), tensors(two[0])["base_model.model.score.weight"])
    assert (
        pruned.config["modules_to_save"] == json.loads((two[0] / "adapter_config.json").read_text())["modules_to_save"]
    )


def test_a_merge_needs_a_head_choice(two: list[Path]) -> None:
    with pytest.raises(rw.OptionError, match=r"full-copy heads \(score.weight\).*heads='mean'.*--heads"):
        rw.merge(two, "cat")


def test_mean_merge_matches_the_averaged_models(two: list[Path], tmp_path: Path) -> None:
    check_mean_merge(two, tmp_path, base, INPUTS, heads="mean")


def test_first_index_and_drop(two: list[Path]) -> None:
    t = [tensors(f)["base_model.model.score.weight"] for f in two]
    assert torch.equal(torch.from_numpy(rw.merge(two, "cat", heads="first").head("score.weight")), t[0])
    assert torch.equal(torch.from_numpy(rw.merge(two, "cat", heads=1).head("score.weight")), t[1])
    dropped = rw.merge(two, "cat", heads="drop")
    assert dropped.heads == {} and "modules_to_save" not in dropped.config
    with pytest.raises(rw.OptionError, match=r"heads=2: there are 2 adapters"):
        rw.merge(two, "cat", heads=2)


def test_old_file_with_an_unlisted_wrapped_head(two: list[Path], tmp_path: Path) -> None:
    """Older PEFT: the head under ``score.modules_to_save.default.weight``, not in the config."""
    old = tmp_path / "old"
    old.mkdir()
    t = tensors(two[0])
    t["base_model.model.score.modules_to_save.default.weight"] = t.pop("base_model.model.score.weight")
    save_file(t, str(old / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((two[0] / "adapter_config.json").read_text())
    cfg["modules_to_save"] = None
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    adapter = rw.load_adapter(old)
    assert adapter.heads["score.weight"].key == "base_model.model.score.modules_to_save.default.weight"
    back = tensors(adapter.save(tmp_path / "old-copy"))
    assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) for k in t)


def test_a_stray_tensor_is_named(two: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    t = tensors(two[0])
    t["base_model.model.model.norm.weight"] = torch.ones(32)
    save_file(t, str(bad / "adapter_model.safetensors"))
    (bad / "adapter_config.json").write_text((two[0] / "adapter_config.json").read_text())
    with pytest.raises(
        rw.AdapterFormatError,
        match=r"tensor 'base_model.model.model.norm.weight' \(F32, shape \[32\]\) is neither a LoRA factor.*"
        r"nor a full-copy head \(modules_to_save \['classifier', 'score'\]\)",
    ):
        rw.load_adapter(bad)


def distilbert() -> torch.nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=16)
    return DistilBertForSequenceClassification(cfg).eval()


def test_distilbert_two_heads_with_biases(tmp_path: Path) -> None:
    """DistilBERT: ``pre_classifier`` and ``classifier`` (weights and 1-D biases) as heads."""
    from peft import LoraConfig, get_peft_model

    folders = []
    for seed in range(2):
        cfg = LoraConfig(
            task_type="SEQ_CLS", r=2, target_modules=["q_lin", "v_lin"], modules_to_save=["pre_classifier"]
        )
        pm = get_peft_model(distilbert(), cfg)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        pm.save_pretrained(str(tmp_path / f"d{seed}"))
        folders.append(tmp_path / f"d{seed}")
    adapter = check_round_trip(folders[0], tmp_path, distilbert, INPUTS)
    assert sorted(adapter.heads) == [
        "classifier.bias",
        "classifier.weight",
        "pre_classifier.bias",
        "pre_classifier.weight",
    ]
    check_mean_merge(folders, tmp_path, distilbert, INPUTS, heads="mean")
