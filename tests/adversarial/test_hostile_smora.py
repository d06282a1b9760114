"""Hostile SMoRA configs and saved folders: every problem is found before the model is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import case
from harness import expect_error, expect_ok

MODEL = """
import torch
from torch import nn
from rankwise.smora import SMoRAConfig, inject_smora, load_smora, save_smora, smora_layers

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj, self.norm = nn.Linear(8, 8), nn.Linear(8, 8), nn.LayerNorm(8)

def model():
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block())

def snapshot(m):
    return {k: (v.detach().clone(), v.requires_grad) for k, v in m.named_parameters()}, type(m[0].q_proj)

cfg = SMoRAConfig(rank=4, top_k=2, target_modules=['q_proj', 'v_proj'])
save_smora(inject_smora(model(), cfg), tmp / 'saved')
"""


def smora_case(body: str) -> str:
    return case(MODEL + body)


REWRITES = [
    ("meta['modules'] = meta['modules'] + meta['modules'][:1]", r"key 'modules' lists '0\.q_proj' twice"),
    ("meta['modules'] = meta['modules'] + ['0.norm']", r"key 'modules': '0\.norm' is LayerNorm"),
    ("meta['config']['rank'] = float('nan')", r"key 'config': SMoRAConfig\.rank must be an integer >= 1, got nan"),
    ("meta['config']['lora_alpha'] = float('inf')", r"lora_alpha must be a finite number > 0, got inf"),
    ("meta['config']['bogus'] = 1", r"unknown SMoRA config key\(s\) \['bogus'\]"),
    ("meta = None  # written below as [[[...]]] 100,000 deep", r"JSON nested too deeply"),
]


@pytest.mark.parametrize(
    ("edit", "match"), REWRITES, ids=["twice", "not-linear", "rank-nan", "alpha-inf", "unknown", "deep"]
)
def test_saved_config_refused_model_untouched(edit: str, match: str, tmp_path: Path) -> None:
    code = smora_case(f"""
p = tmp / 'saved' / 'smora_config.json'
meta = json.loads(p.read_text())
{edit}
p.write_text(json.dumps(meta) if isinstance(meta, dict) else '[' * 100000 + ']' * 100000)
m = model()
before = snapshot(m)
try:
    load_smora(m, tmp / 'saved')
finally:
    after = snapshot(m)
    assert not smora_layers(m) and after[1] is nn.Linear
    assert all(torch.equal(before[0][k][0], v) and before[0][k][1] == g for k, (v, g) in after[0].items())
""")
    expect_error(code, "AdapterFormatError", r"saved/smora_config\.json: .*" + match, cwd=tmp_path)


BAD_CONFIG = [
    ("rank=0", r"rank must be an integer >= 1, got 0"),
    ("rank=True", r"rank must be an integer >= 1, got True"),
    ("rank=4, top_k=5", r"top_k \(5\) must be <= rank \(4\)"),
    ("lora_alpha=float('nan')", r"lora_alpha must be a finite number > 0, got nan"),
    ("dropout=1.0", r"dropout must be in \[0, 1\), got 1\.0"),
    ("balance_rate=-1e-5", r"balance_rate must be a finite number >= 0"),
    ("path='gpu'", r"path must be one of"),
    ("target_modules='('", r"target_modules '\(' is not a valid regex"),
    ("target_modules=[]", r"target_modules must be a non-empty list"),
    ("target_modules=['.q_proj']", r"target_modules entries must be module names like 'q_proj', got '\.q_proj'"),
]


@pytest.mark.parametrize(("args", "match"), BAD_CONFIG, ids=[a for a, _ in BAD_CONFIG])
def test_bad_config(args: str, match: str, tmp_path: Path) -> None:
    expect_error(smora_case(f"SMoRAConfig({args})"), "OptionError", r"SMoRAConfig\." + match, cwd=tmp_path)


def test_target_that_is_not_linear_leaves_model_untouched(tmp_path: Path) -> None:
    code = smora_case("""
m = model()
before = snapshot(m)
try:
    inject_smora(m, SMoRAConfig(rank=4, top_k=2, target_modules=['q_proj', 'norm']))
finally:
    assert not smora_layers(m)
    assert all(g for _, g in snapshot(m)[0].values())  # nothing frozen either
""")
    expect_error(code, "OptionError", r"target module 'norm' matches '0\.norm', a LayerNorm", cwd=tmp_path)


def test_module_listed_twice_in_targets_is_injected_once(tmp_path: Path) -> None:
    code = smora_case("""
m = inject_smora(model(), SMoRAConfig(rank=4, top_k=2, target_modules=['q_proj', 'q_proj', '0.q_proj']))
assert sorted(smora_layers(m)) == ['0.q_proj', '1.q_proj']
assert type(m[0].q_proj.base_layer) is nn.Linear
""")
    expect_ok(code, cwd=tmp_path)
