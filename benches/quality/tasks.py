"""The small real task of bench_quality: scikit-learn's bundled digits, seen through input domains.

A base MLP (64 → 256 → 256 → 10, layers ``fc1``/``fc2``/``fc3``) is trained on the plain digits.
Each *domain* is a fixed corruption of the 8×8 image (shift, occlusions, blur, dilation,
erosion, low contrast); a domain's LoRA adapter is trained
with PEFT on the corrupted training split mixed with as many plain images (so that it adds a
skill rather than replacing the base's), on all three linear layers, and evaluated on the
corrupted test split. Nothing is downloaded. Everything is seeded, and the trained base and
adapters are cached on disk (keyed by the settings and ``VERSION``), so reruns only merge.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

VERSION = 3  # bump to invalidate the cache when the training recipe changes
TARGETS = ["fc1", "fc2", "fc3"]


# ------------------------------------------------------------------------------------ domains
def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translates by (dy, dx) pixels (down/right positive), filling with zeros."""
    out = np.zeros_like(x)
    dst = (slice(max(dy, 0), 8 + min(dy, 0)), slice(max(dx, 0), 8 + min(dx, 0)))
    src = (slice(max(-dy, 0), 8 + min(-dy, 0)), slice(max(-dx, 0), 8 + min(-dx, 0)))
    out[:, dst[0], dst[1]] = x[:, src[0], src[1]]
    return out


def _windows(x: np.ndarray) -> list[np.ndarray]:
    """The 9 shifted views of each pixel's 3×3 neighbourhood (zero padded)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return [p[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]


def _occlude(x: np.ndarray, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    x = x.copy()
    x[:, rows, cols] = 0.0
    return x


# Mild corruptions: the base (trained on plain digits) keeps 10-70 % accuracy on each, an adapter
# brings it to 85-97 %, and a merge of several can do better than the base. Geometric domains
# (flips, transpose, rotations, pixel permutation, inversion) were tried first: they conflict so
# much that every merge, and even the output ensemble, sat at the base model's floor, which
# measures nothing.
DOMAINS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # every function maps images (n, 8, 8) in [0, 1] to images (n, 8, 8) in [0, 1]
    "shift": lambda x: _shift(x, 1, 1),
    "occlude_top": lambda x: _occlude(x, rows=slice(0, 3)),
    "occlude_bottom": lambda x: _occlude(x, rows=slice(5, 8)),
    "occlude_left": lambda x: _occlude(x, cols=slice(0, 3)),
    "blur": lambda x: np.clip(sum(_windows(x)) / 9.0 * 2.0, 0.0, 1.0),
    "dilate": lambda x: np.max(_windows(x), axis=0),
    "erode": lambda x: np.min(_windows(x)[3:6], axis=0),  # horizontal 1×3 erosion
    "contrast": lambda x: 0.3 + 0.4 * x,
}
# Strongly conflicting domains, for one pool only (issue 14): merges of them may not beat the
# base, and a merge that makes the model worse than the base shows there.
GEOMETRIC: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flip_h": lambda x: x[:, :, ::-1],
    "flip_v": lambda x: x[:, ::-1, :],
    "transpose": lambda x: x.transpose(0, 2, 1),
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
}


@dataclass(frozen=True)
class Data:
    x_train: np.ndarray  # (n, 8, 8) float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def domain(self, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        x = x if name == "plain" else (DOMAINS.get(name) or GEOMETRIC[name])(x)
        return np.ascontiguousarray(x.reshape(len(x), 64), dtype=np.float32), y


def load_data() -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, stratify=d.target, random_state=0)
    return Data(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64))


# ------------------------------------------------------------------------------------ models
def make_mlp(hidden: int = 256):  # -> torch.nn.Module
    import torch.nn as nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
            self.fc3 = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.fc3(nn.functional.relu(self.fc2(nn.functional.relu(self.fc1(x)))))

    return MLP()


def _fit(model, params, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, seed: int, batch: int = 64) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# ------------------------------------------------------------------------------------ adapters
@dataclass(frozen=True)
class AdapterSpec:
    """One adapter to train: a domain, a training seed (data order), a LoRA init seed, a rank."""

    domain: str
    seed: int
    init_seed: int
    rank: int = 8
    replay: bool = True  # mix plain images into the training data (Recipe.replay of them)
    targets: tuple[str, ...] = tuple(TARGETS)  # the layers the LoRA adapts

    @property
    def name(self) -> str:
        layers = "" if self.targets == tuple(TARGETS) else "-" + "+".join(self.targets)
        return f"{self.domain}-s{self.seed}-i{self.init_seed}-r{self.rank}" + ("" if self.replay else "-norep") + layers


@dataclass(frozen=True)
class Recipe:
    base_epochs: int = 30
    base_lr: float = 3e-3
    lora_epochs: int = 12
    lora_lr: float = 5e-3
    batch: int = 128
    hidden: int = 256
    replay: float = 1.0  # plain training images mixed into each adapter's data, per domain image
    alpha_per_rank: float = 2.0  # lora_alpha = 2r: scaling 2 at every rank

    def key(self) -> str:
        blob = json.dumps({"v": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


class Workspace:
    """The base model and the trained adapters of one recipe, cached under ``root``."""

    def __init__(self, root: Path, recipe: Recipe, data: Data) -> None:
        self.recipe = recipe
        self.data = data
        self.root = root / f"recipe-{recipe.key()}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._base = None
        self.trained = 0  # models trained by this process (0: everything came from the cache)
        acc_file = self.root / "accuracy.json"
        self._acc_cache: dict[str, dict[str, float]] = json.loads(acc_file.read_text()) if acc_file.exists() else {}

    # base ---------------------------------------------------------------------------------
    def base(self):
        """The trained base MLP (a fresh deep copy on every call)."""
        import copy

        import torch

        if self._base is None:
            path = self.root / "base.pt"
            model = make_mlp(self.recipe.hidden)
            if path.exists():
                model.load_state_dict(torch.load(path))
            else:
                torch.manual_seed(0)
                model = make_mlp(self.recipe.hidden)
                x, y = self.data.domain("plain", "train")
                r = self.recipe
                _fit(model, model.parameters(), x, y, epochs=r.base_epochs, lr=r.base_lr, seed=0, batch=r.batch)
                self.trained += 1
                torch.save(model.state_dict(), path)
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._base = model
        return copy.deepcopy(self._base)

    # adapters -----------------------------------------------------------------------------
    def adapter(self, spec: AdapterSpec) -> Path:
        """The PEFT folder of ``spec``'s adapter, trained (and cached) on first use."""
        import torch
        from peft import LoraConfig, get_peft_model

        out = self.root / "adapters" / spec.name
        if (out / "adapter_config.json").exists():
            return out
        r = self.recipe
        base = self.base()
        torch.manual_seed(spec.init_seed)  # PEFT draws A (kaiming-uniform) from the global RNG
        cfg = LoraConfig(
            r=spec.rank, lora_alpha=r.alpha_per_rank * spec.rank, lora_dropout=0.0, target_modules=list(spec.targets)
        )
        model = get_peft_model(base, cfg)
        x, y = self.data.domain(spec.domain, "train")
        if spec.replay and r.replay > 0:  # keep the plain task: a fine-tune that adds a skill, not one that replaces
            xp, yp = self.data.domain("plain", "train")
            idx = np.random.default_rng(spec.seed).permutation(len(xp))[: int(r.replay * len(x))]
            x, y = np.concatenate([x, xp[idx]]), np.concatenate([y, yp[idx]])
        params = [p for p in model.parameters() if p.requires_grad]
        _fit(model, params, x, y, epochs=r.lora_epochs, lr=r.lora_lr, seed=10_000 + spec.seed, batch=r.batch)
        self.trained += 1
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return out

    def individual_accuracy(self, spec: AdapterSpec) -> float:
        """Test accuracy of ``spec``'s adapter on its own domain (loaded back with PEFT)."""
        from peft import PeftModel

        if spec.name not in self._acc_cache:
            model = PeftModel.from_pretrained(self.base(), str(self.adapter(spec)))
            model.eval()
            self._acc_cache[spec.name] = {"acc": accuracy(model, *self.data.domain(spec.domain, "test"))}
            (self.root / "accuracy.json").write_text(json.dumps(self._acc_cache, indent=1, sort_keys=True))
        return self._acc_cache[spec.name]["acc"]
