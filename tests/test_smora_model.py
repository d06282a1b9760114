"""SMoRA in a model: inject into a tiny Llama, train, save -> load, bad checkpoints."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from peft_factory import tiny_llama
from rankwise.errors import AdapterFormatError, AdapterNotFoundError, OutputExistsError
from rankwise.smora import (
    SMoRAConfig,
    attach_balancer,
    inject_smora,
    load_smora,
    read_smora_config,
    save_smora,
    smora_layers,
    smora_state_dict,
)
from rankwise.smora.io import CONFIG_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TARGETS = ["q_proj", "v_proj", "down_proj"]


def _tiny_llama(seed: int = 0):
    # The factory's model in training mode: SMoRA balances only while training.
    return tiny_llama(seed).train()


def _config(**kw) -> SMoRAConfig:
    base = {"rank": 8, "top_k": 2, "lora_alpha": 4.0, "target_modules": TARGETS}
    base.update(kw)
    return SMoRAConfig(**base)


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama with SMoRA trained a few steps (balance rate large enough to move beta)."""
    model = inject_smora(_tiny_llama(), _config(balance_rate=1e-2))
    torch.manual_seed(1)
    ids = torch.randint(0, 64, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    attach_balancer(opt, model)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return model, losses, ids, mask


def test_inject_freezes_all_but_smora(trained):
    model, *_ = trained
    names = list(smora_layers(model))
    assert len(names) == 6 and all(n.rsplit(".", 1)[-1] in TARGETS for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = {f"{n}.{p}" for n in names for p in ("lora_A", "lora_B", "router.weight")}
    assert trainable == want


def test_llama_training_lowers_the_loss(trained):
    _, losses, *_ = trained
    assert losses[-1] < losses[0] - 0.1, losses


def test_save_load_roundtrip_in_a_fresh_model(trained, tmp_path):
    model, _, ids, mask = trained
    out = save_smora(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert any(m.balance_bias.abs().max() > 0 for m in smora_layers(model).values())

    fresh = _tiny_llama()  # same seed: same base weights; no SMoRA yet
    load_smora(fresh, out)
    fresh.eval()
    sd_a, sd_b = smora_state_dict(model), smora_state_dict(fresh)
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    with torch.no_grad():
        ya = model(input_ids=ids, attention_mask=mask).logits
        yb = fresh(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ya, yb)
    cfg, modules = read_smora_config(out)
    assert cfg.rank == 8 and modules == list(smora_layers(model))

    # Loading into a model that already has matching SMoRA layers works too.
    again = inject_smora(_tiny_llama(), _config())
    load_smora(again, out)
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, ya)

    with pytest.raises(OutputExistsError):
        save_smora(model, out)
    save_smora(model, out, overwrite=True)


@pytest.fixture()
def saved(trained, tmp_path):
    model, *_ = trained
    return save_smora(model, tmp_path / "ok")


def _rewrite_weights(src, dst, edit):
    dst.mkdir()
    (dst / CONFIG_NAME).write_text((src / CONFIG_NAME).read_text())
    sd = load_file(str(src / WEIGHTS_NAME))
    edit(sd)
    save_file(sd, str(dst / WEIGHTS_NAME))
    return dst


def _rewrite_config(src, dst, edit):
    dst.mkdir()
    meta = json.loads((src / CONFIG_NAME).read_text())
    edit(meta)
    (dst / CONFIG_NAME).write_text(json.dumps(meta))
    (dst / WEIGHTS_NAME).write_bytes((src / WEIGHTS_NAME).read_bytes())
    return dst


KEY = "model.layers.1.self_attn.v_proj"


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda sd: sd.pop(f"{KEY}.lora_B"), f"key '{KEY}.lora_B' is missing"),
        (lambda sd: sd.pop(f"{KEY}.balance_bias"), f"key '{KEY}.balance_bias' is missing"),
        (
            lambda sd: sd.__setitem__(f"{KEY}.lora_A", torch.zeros(4, 32)),
            f"key '{KEY}.lora_A' has shape (4, 32), expected (8, 32)",
        ),
        (
            lambda sd: sd.__setitem__(f"{KEY}.router.weight", torch.zeros(8, 31)),
            "expected (8, 32)",
        ),
        (lambda sd: sd.__setitem__("model.extra.lora_A", torch.zeros(1)), "'model.extra.lora_A'"),
        (
            lambda sd: sd.__setitem__(f"{KEY}.lora_B", torch.full((16, 8), float("nan"))),
            "non-finite",
        ),
        (
            lambda sd: sd.__setitem__(f"{KEY}.lora_B", torch.zeros(16, 8, dtype=torch.int32)),
            "not a float",
        ),
    ],
)
def test_bad_weights_are_clear_errors(saved, tmp_path, edit, needle):
    bad = _rewrite_weights(saved, tmp_path / "bad", edit)
    model = _tiny_llama()
    with pytest.raises(AdapterFormatError) as e:
        load_smora(model, bad)
    assert needle in str(e.value) and WEIGHTS_NAME in str(e.value)
    assert not smora_layers(model)  # a failed load leaves the model untouched


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m["config"].__setitem__("top_k", 99), "top_k (99) must be <= rank (8)"),
        (lambda m: m["config"].__setitem__("rank", 16), "key 'model.layers.0.self_attn.q_proj"),
        (lambda m: m["config"].__setitem__("topk", 1), "unknown SMoRA config key"),
        (lambda m: m.pop("modules"), "key 'modules' is missing"),
        (lambda m: m.__setitem__("modules", ["model.nope"]), "'model.nope' is absent"),
        (lambda m: m.__setitem__("modules", ["model.layers.0.mlp"]), "is LlamaMLP"),
        (lambda m: m.__setitem__("format_version", 7), "format_version"),
    ],
)
def test_bad_config_files_are_clear_errors(saved, tmp_path, edit, needle):
    bad = _rewrite_config(saved, tmp_path / "bad", edit)
    with pytest.raises(AdapterFormatError) as e:
        load_smora(_tiny_llama(), bad)
    assert needle in str(e.value)


def test_missing_files_and_mismatched_layers(saved, tmp_path):
    with pytest.raises(AdapterNotFoundError, match=CONFIG_NAME):
        load_smora(_tiny_llama(), tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / CONFIG_NAME).write_text((saved / CONFIG_NAME).read_text())
    with pytest.raises(AdapterNotFoundError, match=WEIGHTS_NAME):
        load_smora(_tiny_llama(), tmp_path / "half")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        load_smora(_tiny_llama(), tmp_path / "junk")
    with pytest.raises(AdapterFormatError, match="'config.top_k' is 2"):
        load_smora(inject_smora(_tiny_llama(), _config(top_k=4)), saved)
    with pytest.raises(AdapterFormatError, match="differ from the model's"):
        load_smora(inject_smora(_tiny_llama(), _config(target_modules=["q_proj"])), saved)


def test_deepcopy_gets_its_own_mask_slot():
    import copy

    model = inject_smora(_tiny_llama(), _config())
    clone = copy.deepcopy(model)
    slot_a = next(iter(smora_layers(model).values())).mask_slot
    slot_b = next(iter(smora_layers(clone).values())).mask_slot
    assert slot_a is not slot_b
    clone.train()
    ids = torch.randint(0, 64, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone(input_ids=ids, attention_mask=mask)
    assert {int(m.balance_counts.sum()) for m in smora_layers(clone).values()} == {7 * 2}
