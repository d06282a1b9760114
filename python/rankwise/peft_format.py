"""The PEFT LoRA adapter format: ``adapter_config.json`` + ``adapter_model.safetensors``.

What PEFT writes, and how it reads it back (peft/tuners/lora, peft/utils/save_and_load.py):
- keys: ``<prefix><module>.lora_A.weight`` (rank × in_features) and ``...lora_B.weight``
  (out_features × rank), prefix ``base_model.model.``, the adapter name stripped;
- scaling per module: ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), where ``r`` and
  ``alpha`` come from ``rank_pattern`` / ``alpha_pattern`` when a pattern key matches the module
  name (``re.match(rf"(.*\\.)?({key})$", module)``, first match wins), else ``r`` / ``lora_alpha``;
- ``fan_in_fan_out`` transposes only the base weight (GPT-2's Conv1D): the factors keep the
  nn.Linear layout, and the delta PEFT adds is ``(B @ A).T * scaling``.
Features whose tensors rankwise would have to drop to merge (DoRA, LoRA bias, modules_to_save,
embedding or conv LoRA, ...) are refused with an error naming the feature, never dropped.

Here: the config (``read_config`` -> ``LoraSpec``), the key names and their pairing into modules,
and the module table of one adapter (``ModuleInfo`` per module) built from its file's tensor
listing. Reading the bytes is the core's (``rankwise._core.MappedFiles``), the Adapter's
(``adapter.py``).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AdapterFormatError, AdapterNotFoundError

if sys.version_info >= (3, 11):
    import re._constants as _sre_constants  # type: ignore[import-not-found]
    import re._parser as _sre_parser  # type: ignore[import-not-found]
else:  # pragma: no cover
    import sre_constants as _sre_constants
    import sre_parse as _sre_parser

CONFIG_NAME = "adapter_config.json"
#: Larger configs are refused before reading (real ones are a few KiB).
MAX_CONFIG_BYTES = 16 << 20
_F32_MAX = 3.4028234663852886e38
_F32_TINY = 1.1754943508222875e-38
WEIGHTS_NAME = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."

#: The safetensors dtypes of factors rankwise reads and writes.
DTYPES = ("F32", "F16", "BF16", "F64")

_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"

# Config switches that change what the adapter computes in ways a (B, A) merge cannot keep.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora=true)",
    "use_qalora": "QALoRA (use_qalora=true)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices",
    "lora_bias": "LoRA bias on lora_B (lora_bias=true)",
}

# Tensor-name markers of the same features, for adapters whose config does not say.
_UNSUPPORTED_KEYS = [
    ("lora_magnitude_vector", "DoRA"),
    ("lora_embedding_A", "LoRA on embedding layers"),
    ("lora_embedding_B", "LoRA on embedding layers"),
    ("modules_to_save", "modules_to_save"),
    ("trainable_tokens", "trainable_token_indices"),
]


@dataclass(frozen=True)
class LoraSpec:
    """The parts of a LoRA ``adapter_config.json`` that decide the numerics."""

    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    fan_in_fan_out: bool
    target_modules: Any
    raw: dict[str, Any]

    def rank_and_alpha(self, module: str) -> tuple[int, float]:
        r = self.rank_pattern.get(pattern_key(self.rank_pattern, module), self.r)
        alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, module), self.lora_alpha)
        return int(r), float(alpha)

    def scaling(self, module: str) -> float:
        r, alpha = self.rank_and_alpha(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def pattern_key(patterns: Mapping[str, Any], module: str) -> str:
    """PEFT's ``get_pattern_key``: the first pattern that matches the end of ``module``.

    Keys are checked by ``check_pattern`` where they are read; here a key that is a plain name
    (the usual case) matches by string comparison, the others by PEFT's regex.
    """
    for key in patterns:
        if _PLAIN.fullmatch(key):
            # PEFT's regex with a plain key: the key is the whole name or a dotted suffix of it
            # ('.' in the key matches any character, as in the regex).
            if _plain_match(key, module):
                return key
        elif re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


_PLAIN = re.compile(r"[\w.\-]*")
#: Longest pattern key accepted: longer ones are not module names.
MAX_PATTERN_LEN = 1000


def _plain_match(key: str, module: str) -> bool:
    if "." not in key:
        return module == key or module.endswith("." + key)
    n = len(key)
    starts = [0] + [i + 1 for i, c in enumerate(module) if c == "."]
    tail = module[-n:] if n <= len(module) else None
    if tail is None or len(module) - n not in starts:
        return False
    return all(k == "." or k == c for k, c in zip(key, tail))


def check_pattern(key: object, where: str, error: type[Exception] = AdapterFormatError) -> str:
    """A ``rank_pattern``/``alpha_pattern`` key that matches in bounded time, or
    ``AdapterFormatError``: an invalid regex, or one whose backtracking can blow up (a
    quantifier over a group holding a quantifier or an alternation, a backreference, more than
    one unbounded quantifier)."""
    if not isinstance(key, str) or not key:
        raise error(f"{where}: pattern key {key!r} must be a non-empty string")
    if len(key) > MAX_PATTERN_LEN:
        raise error(f"{where}: pattern key of {len(key)} characters (at most {MAX_PATTERN_LEN})")
    if _PLAIN.fullmatch(key):
        return key
    try:
        parsed = _sre_parser.parse(key)
    except (re.error, RecursionError, OverflowError) as e:
        raise error(f"{where}: pattern key {key!r} is not a valid regex ({e})") from None
    unbounded = 0

    def walk(items: Any, in_repeat: bool) -> None:
        nonlocal unbounded
        for op, arg in items:
            name = str(op)
            if name in ("GROUPREF", "GROUPREF_EXISTS"):
                raise error(f"{where}: pattern key {key!r}: backreferences are not supported")
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                _lo, hi, sub = arg
                if in_repeat:
                    raise error(
                        f"{where}: pattern key {key!r}: a quantifier inside a quantified group can take "
                        "exponential time to match; use module names or a simpler regex"
                    )
                if hi == _sre_constants.MAXREPEAT or hi > 100:
                    unbounded += 1
                walk(sub, True)
            elif name == "BRANCH":
                if in_repeat:
                    raise error(
                        f"{where}: pattern key {key!r}: an alternation inside a quantified group can take "
                        "exponential time to match; use module names or a simpler regex"
                    )
                for b in arg[1]:
                    walk(b, in_repeat)
            elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
                walk(arg[-1], in_repeat)
            elif name in ("ASSERT", "ASSERT_NOT"):
                walk(arg[1], True)

    walk(parsed, False)
    if unbounded > 1:
        raise error(
            f"{where}: pattern key {key!r} has {unbounded} unbounded quantifiers (at most 1): matching "
            "can take polynomial time in the module name's length"
        )
    return key


def read_config(folder: Path) -> LoraSpec:
    """Reads and validates ``folder/adapter_config.json``."""
    if not folder.exists():
        hint = ""
        s = str(folder)
        if s.count("/") == 1 and not s.startswith((".", "/", "~")) and not folder.parent.exists():
            hint = " (rankwise reads local folders, not Hugging Face Hub ids: download it first, e.g. `hf download`)"
        raise AdapterNotFoundError(f"{folder}: adapter folder does not exist{hint}")
    if not folder.is_dir():
        raise AdapterFormatError(f"{folder}: is not a folder (expected a PEFT adapter folder)")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterNotFoundError(f"{path}: missing; {folder} is not a PEFT adapter folder")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{path}: {size} bytes; an adapter config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({e})") from e
    except RecursionError:
        raise AdapterFormatError(f"{path}: JSON nested too deeply to be an adapter config") from None
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterFormatError(f"{path}: peft_type is {peft_type}; rankwise reads LoRA adapters")
    for flag, feature in _UNSUPPORTED_FLAGS.items():
        if raw.get(flag):
            raise AdapterFormatError(f"{path}: {feature} is not supported by rankwise")
    bias = raw.get("bias", "none")
    if bias not in (None, "none"):
        raise AdapterFormatError(f"{path}: bias={bias!r} trains base-layer biases; rankwise supports bias='none' only")
    if raw.get("modules_to_save"):
        raise AdapterFormatError(
            f"{path}: modules_to_save={raw['modules_to_save']} (full copies of modules) is not supported by rankwise"
        )

    def check(what: str, v: Any, kind: type) -> Any:
        # Ranks are integers below 2**31, alphas finite float32 numbers: the scaling alpha / r
        # is then a finite float32 too (never 0 or inf when folded).
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise AdapterFormatError(f"{path}: {what} must be a finite positive number, got {v!r}")
        if kind is int and (v != int(v) or v >= 2**31):
            raise AdapterFormatError(f"{path}: {what} must be an integer below 2**31, got {v!r}")
        if kind is float and not _F32_TINY <= v <= _F32_MAX:
            raise AdapterFormatError(
                f"{path}: {what} = {v!r} is outside float32's normal range ({_F32_TINY:g} .. {_F32_MAX:g}): "
                "the folded factors would overflow or vanish"
            )
        return kind(v)

    def pattern(name: str, kind: type) -> dict[str, Any]:
        p = raw.get(name) or {}
        if not isinstance(p, dict):
            raise AdapterFormatError(f"{path}: '{name}' must be an object, got {p!r}")
        return {check_pattern(k, f"{path}: {name}"): check(f"{name}[{k!r}]", v, kind) for k, v in p.items()}

    return LoraSpec(
        r=check("'r'", raw.get("r", 8), int),
        lora_alpha=check("'lora_alpha'", raw.get("lora_alpha", 8), float),
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern=pattern("rank_pattern", int),
        alpha_pattern=pattern("alpha_pattern", float),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        target_modules=raw.get("target_modules"),
        raw=raw,
    )


@dataclass(frozen=True)
class ModuleKeys:
    """Where one adapted module's factors live in the safetensors file."""

    name: str  # module name in the base model, e.g. "model.layers.0.self_attn.q_proj"
    key_a: str
    key_b: str


def module_keys(weights: Path, tensor_names: list[str]) -> dict[str, ModuleKeys]:
    """Pairs the lora_A/lora_B keys of a file into modules; anything else is an error."""
    a_keys: dict[str, str] = {}
    b_keys: dict[str, str] = {}
    for key in tensor_names:
        for marker, feature in _UNSUPPORTED_KEYS:
            if marker in key:
                raise AdapterFormatError(f"{weights}: tensor '{key}': {feature} is not supported by rankwise")
        if key.endswith(_A_SUFFIX) or key.endswith(_B_SUFFIX):
            table = a_keys if key.endswith(_A_SUFFIX) else b_keys
            name = _module_name(key[: -len(_A_SUFFIX)])
            if name in table:
                # PEFT loads the prefixed key; taking either would be a guess.
                raise AdapterFormatError(
                    f"{weights}: tensors '{table[name]}' and '{key}' are the same factor of module "
                    f"'{name}' (with and without the '{KEY_PREFIX}' prefix): ambiguous file"
                )
            table[name] = key
        elif key.endswith(".lora_B.bias"):
            raise AdapterFormatError(
                f"{weights}: tensor '{key}': LoRA bias (lora_bias=true) is not supported by rankwise"
            )
        else:
            raise AdapterFormatError(
                f"{weights}: tensor '{key}' is not a LoRA factor "
                f"(expected keys ending in '{_A_SUFFIX}' or '{_B_SUFFIX}')"
            )
    for name in sorted(a_keys.keys() - b_keys.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{a_keys[name]}' has no matching lora_B")
    for name in sorted(b_keys.keys() - a_keys.keys()):
        raise AdapterFormatError(f"{weights}: tensor '{b_keys[name]}' has no matching lora_A")
    if not a_keys:
        raise AdapterFormatError(f"{weights}: holds no LoRA factors")
    return {n: ModuleKeys(n, a_keys[n], b_keys[n]) for n in sorted(a_keys, key=natural_key)}


def _module_name(stem: str) -> str:
    return stem[len(KEY_PREFIX) :] if stem.startswith(KEY_PREFIX) else stem


def factor_keys(module: str) -> tuple[str, str]:
    """The PEFT keys under which a module's factors are saved."""
    return f"{KEY_PREFIX}{module}{_A_SUFFIX}", f"{KEY_PREFIX}{module}{_B_SUFFIX}"


def natural_key(name: str) -> list[Any]:
    """Sort key that puts layers.2 before layers.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class ModuleInfo:
    """One adapted module: its shape, rank and scaling (delta = scaling · B @ A), the dtype and
    the keys of its factors."""

    name: str
    rank: int
    alpha: float
    scaling: float
    d_in: int
    d_out: int
    dtype: str
    key_a: str
    key_b: str

    @property
    def num_params(self) -> int:
        return self.rank * (self.d_in + self.d_out)


def weights_path(folder: Path) -> Path:
    """``folder/adapter_model.safetensors``; a pickled ``adapter_model.bin`` is refused."""
    p = folder / WEIGHTS_NAME
    if not p.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterFormatError(
                f"{folder / 'adapter_model.bin'}: pickled weights are not read (unsafe); re-save "
                "the adapter with safe_serialization=True"
            )
        raise AdapterNotFoundError(f"{p}: missing; {folder} has no adapter weights")
    return p


def modules_from_listing(
    folder: Path,
    weights: Path,
    spec: LoraSpec,
    listing: Mapping[str, tuple[str, list[int]]],
) -> dict[str, ModuleInfo]:
    """The module table of one adapter from its parsed config and its file's tensor listing
    (``{key: (dtype, shape)}``): keys paired, dtypes, shapes and ranks checked against the config."""
    keys = module_keys(weights, list(listing))
    mods: dict[str, ModuleInfo] = {}
    for name, k in keys.items():
        a_dt, a_shape = listing[k.key_a]
        b_dt, b_shape = listing[k.key_b]
        for key, dt, shape, what in (
            (k.key_a, a_dt, a_shape, "rank × in_features"),
            (k.key_b, b_dt, b_shape, "out_features × rank"),
        ):
            if dt not in DTYPES:
                raise AdapterFormatError(
                    f"{weights}: tensor '{key}': dtype {dt} is not supported (rankwise reads F16, BF16, F32 and F64)"
                )
            if len(shape) != 2:
                raise AdapterFormatError(
                    f"{weights}: tensor '{key}': expected a 2-D ({what}) factor, got shape "
                    f"{shape} (conv LoRA is not supported)"
                )
        if a_shape[0] != b_shape[1]:
            raise AdapterFormatError(
                f"{weights}: tensor '{k.key_b}': rank mismatch: lora_B has shape {b_shape} but "
                f"'{k.key_a}' has rank {a_shape[0]} (shape {a_shape})"
            )
        if 0 in a_shape or 0 in b_shape:
            raise AdapterFormatError(
                f"{weights}: module '{name}': lora_A {a_shape} and lora_B {b_shape}: a factor with a zero "
                "dimension (rank, in_features or out_features 0) adapts nothing"
            )
        rank = a_shape[0]
        cfg_rank, alpha = spec.rank_and_alpha(name)
        if rank != cfg_rank:
            raise AdapterFormatError(
                f"{weights}: tensor '{k.key_a}': rank {rank} but {folder / CONFIG_NAME} "
                f"gives this module rank {cfg_rank} (r / rank_pattern)"
            )
        scaling = spec.scaling(name)
        if not _F32_TINY <= scaling <= _F32_MAX:
            raise AdapterFormatError(
                f"{folder / CONFIG_NAME}: module '{name}': scaling alpha / r = {scaling:g} is outside "
                "float32's normal range: the folded factors would overflow or vanish"
            )
        dtype = a_dt if a_dt == b_dt else "F32"
        mods[name] = ModuleInfo(name, rank, alpha, scaling, a_shape[1], b_shape[0], dtype, k.key_a, k.key_b)
    return mods
