"""Hostile adapter_config.json files: numbers out of range or not numbers, pattern keys that are
not regexes or backtrack, nesting and size. Each must be an AdapterFormatError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cases import case
from harness import expect_error, expect_ok

# (config fields, what the message must say)
BAD_NUMBERS = [
    ({"r": float("nan")}, r"'r' must be a finite positive number, got nan"),
    ({"r": float("inf")}, r"'r' must be a finite positive number, got inf"),
    ({"r": -2}, r"'r' must be a finite positive number, got -2"),
    ({"r": 0}, r"'r' must be a finite positive number, got 0"),
    ({"r": 2.5}, r"'r' must be an integer"),
    ({"r": "2"}, r"'r' must be a finite positive number, got '2'"),
    ({"r": True}, r"'r' must be a finite positive number, got True"),
    ({"r": 2**40}, r"'r' must be an integer below 2\*\*31"),
    ({"lora_alpha": float("nan")}, r"'lora_alpha' must be a finite positive number, got nan"),
    ({"lora_alpha": float("-inf")}, r"'lora_alpha' must be a finite positive number, got -inf"),
    ({"lora_alpha": -4}, r"'lora_alpha' must be a finite positive number"),
    ({"lora_alpha": 1e41}, r"lora_alpha' = 1e\+41 is outside float32's normal range"),
    ({"lora_alpha": 1e-45}, r"lora_alpha' = 1e-45 is outside float32's normal range"),
    ({"lora_alpha": None}, r"'lora_alpha' must be a finite positive number, got None"),
    ({"rank_pattern": [2]}, r"'rank_pattern' must be an object"),
    ({"rank_pattern": {"q_proj": "2"}}, r"rank_pattern\['q_proj'\] must be a finite positive number"),
    ({"rank_pattern": {"q_proj": float("nan")}}, r"rank_pattern\['q_proj'\] must be a finite positive number"),
    ({"alpha_pattern": {"q_proj": 1e41}}, r"alpha_pattern\['q_proj'\] = 1e\+41 is outside float32"),
    ({"alpha_pattern": {"q_proj": {"x": 1}}}, r"alpha_pattern\['q_proj'\] must be a finite positive number"),
]


@pytest.mark.parametrize(("fields", "match"), BAD_NUMBERS, ids=[repr(f) for f, _ in BAD_NUMBERS])
def test_bad_number(fields: dict, match: str, tmp_path: Path) -> None:
    # json.dumps writes NaN / Infinity, which Python's (and PEFT's) json reader accepts.
    code = case(f"rw.Adapter.load(adapter('a', json.loads({json.dumps(json.dumps(fields))})))")
    expect_error(code, "AdapterFormatError", r"a/adapter_config\.json: .*" + match, cwd=tmp_path)


# Pattern keys: invalid, or regexes whose matching time can blow up. Refused quickly (a child
# that backtracked would hit the timeout and fail as a hang).
BAD_PATTERNS = [
    ("(", r"is not a valid regex"),
    ("q_proj[", r"is not a valid regex"),
    ("(a+)+$", r"quantifier inside a quantified group"),
    ("(a*)*b", r"quantifier inside a quantified group"),
    ("(a|aa)*c", r"alternation inside a quantified group"),
    ("(q)\\1", r"backreferences are not supported"),
    (".*a.*b", r"2 unbounded quantifiers"),
    ("x" * 2000 + "+", r"pattern key of 2001 characters"),
    ("", r"must be a non-empty string"),
]


@pytest.mark.parametrize(("key", "match"), BAD_PATTERNS, ids=[k[:20] for k, _ in BAD_PATTERNS])
@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_bad_pattern_key(field: str, key: str, match: str, tmp_path: Path) -> None:
    cfg = {field: {key: 2}}
    code = case(f"rw.Adapter.load(adapter('a', json.loads({json.dumps(json.dumps(cfg))})))")
    expect_error(code, "AdapterFormatError", rf"a/adapter_config\.json: {field}: .*{match}", timeout=30, cwd=tmp_path)


def test_plain_pattern_keys_match_like_peft(tmp_path: Path) -> None:
    # The string matcher of plain keys against PEFT's own rule (re.match(rf"(.*\.)?({key})$")),
    # on names where '.' in a key matches any character, as in the regex.
    code = case("""
import random, re
from rankwise.peft_format import pattern_key
rng = random.Random(0)
chars = "ab.1_"
for _ in range(20000):
    key = "".join(rng.choice(chars) for _ in range(rng.randint(1, 4)))
    mod = "".join(rng.choice(chars) for _ in range(rng.randint(0, 7)))
    want = key if re.match(rf"(.*\\.)?({key})$", mod) else mod
    assert pattern_key({key: 1}, mod) == want, (key, mod)
""")
    expect_ok(code, cwd=tmp_path)


def test_allowed_regex_key_still_applies(tmp_path: Path) -> None:
    # One bounded regex key (no nesting) is PEFT's rule as before: the module gets its rank 4.
    code = case("""
h, d = good_header(r=4)
write_raw(tmp / 'a', h, d, {**CONFIG, 'r': 2, 'rank_pattern': {'layers\\\\.[0-9]+\\\\.self_attn\\\\.q_proj': 4}})
a = rw.Adapter.load(tmp / 'a')
assert [m.rank for m in a.modules.values()] == [4]
""")
    expect_ok(code, cwd=tmp_path)


def test_json_nested_100000_deep(tmp_path: Path) -> None:
    code = case("""
adapter('a')
(tmp / 'a' / 'adapter_config.json').write_text('[' * 100000 + ']' * 100000)
rw.Adapter.load(tmp / 'a')
""")
    expect_error(code, "AdapterFormatError", r"a/adapter_config\.json: JSON nested too deeply", cwd=tmp_path)


def test_huge_config_refused_before_reading(tmp_path: Path) -> None:
    # A sparse 1 GiB config: refused by its size, not read into memory.
    code = case("""
adapter('a')
with open(tmp / 'a' / 'adapter_config.json', 'r+b') as f:
    f.truncate(1 << 30)
import resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, resource.RLIM_INFINITY))
rw.Adapter.load(tmp / 'a')
""")
    expect_error(
        code,
        "AdapterFormatError",
        r"a/adapter_config\.json: 1073741824 bytes; an adapter config is at most",
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", r"expected a JSON object, got list"),
        ('{"peft_type": "IA3"}', r"peft_type is IA3"),
        ("\xff\xfe", r"not valid JSON"),
    ],
    ids=["list", "ia3", "not-utf8"],
)
def test_config_not_a_lora_object(text: str, match: str, tmp_path: Path) -> None:
    code = case(f"""
adapter('a')
(tmp / 'a' / 'adapter_config.json').write_bytes({text.encode("latin-1")!r})
rw.Adapter.load(tmp / 'a')
""")
    expect_error(code, "AdapterFormatError", r"a/adapter_config\.json: " + match, cwd=tmp_path)


def test_scaling_below_float32_normal(tmp_path: Path) -> None:
    # alpha and r each in range, their ratio not: the folded B would flush to zero.
    code = case("h, d = good_header(r=2)\nrw.Adapter.load(adapter('a', {'lora_alpha': 2e-38}))")
    expect_error(code, "AdapterFormatError", r"scaling alpha / r = 1e-38 is outside float32", cwd=tmp_path)
