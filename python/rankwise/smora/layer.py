"""SMoRALinear: a frozen ``nn.Linear`` plus a rank-r LoRA whose r ranks are routed experts.

Math (arXiv 2501.15103 §3 and the authors' public SRMoLE code, as summarised in PAPERS.md §2),
per token x, with the r ranks grouped in E = r / block_size blocks of consecutive ranks:
    s = sigmoid(router(x))                       router: Linear(d_in, E, bias=False)
    S = top-k blocks of (s + beta)               beta: balance bias, a buffer, never trained
    g_e = k * (s_e + beta_e) / sum_{j in S}(s_j + beta_j)     for e in S (the gates sum to k)
    y = W0 x + (lora_alpha / (k * block_size)) * sum_{e in S} g_e * sum_{i in e} b_i (a_i . dropout(x))
block_size 1 is SMoRA (every rank an expert); block_size b > 1 is a multi-LoRA MoE of E experts
of rank b. With a zero router every s_e = 0.5, and with top_k = E every gate is exactly 1: the
layer is then a plain LoRA of scale lora_alpha / r (the identity the tests check against PEFT).

Two compute paths, same results up to float rounding (tested to 1e-5 in f32, fwd and bwd):
- dense: ((x A^T) * G) B^T with G the (tokens x r) gate matrix, zero off the top-k. At r = 64 it
  costs what a rank-64 LoRA costs, plus the router GEMM (fused with x A^T when dropout is off);
- gathered: only the k * block_size selected rows of A and columns of B, gathered per token and
  contracted with batched matmuls. Saves FLOPs but moves tokens x k x block_size x (d_in + d_out)
  gathered weights through memory; see ``choose_path`` for when that wins.
Gradients reach only the selected ranks' rows of A / columns of B (exact zeros elsewhere in both
paths) and the router (through the gate values; the top-k choice itself has no gradient).

Load balancing (loss-free, sign-updated bias as in the authors' code) with our fixes:
- counts only non-padding tokens when an attention mask is known (``_MaskSlot``, filled by the
  forward pre-hook that ``inject_smora`` installs, or by ``smora_attention_mask``);
- counts are accumulated in training forwards and applied once per optimizer step by
  ``balance_step`` (``smora_balance_step(model)`` / ``attach_balancer(optimizer, model)``), so
  gradient accumulation sums micro-batches;
- forwards that run inside a backward pass are not counted: that is where both of torch's
  gradient-checkpointing modes recompute, so a checkpointed layer counts once, not twice;
- beta is a persistent float32 buffer (saved and loaded; kept float32 through ``model.to(bf16)``
  because u = 1e-5 steps vanish in bf16).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MergeConfigError
from .config import SMoRAConfig

# Rule for path="auto": gather only when the active ranks are a small share of the rank, since
# gathering saves at most the A and B products (the router GEMM is on both paths) and moves
# the gathered weights through memory. The CPU constant is measured and the CUDA one reasoned
# from the GEMM-to-bandwidth ratio (RESULTS.md, SMoRA "Dense vs gathered" and "Measured once by
# hand"); neither is tuned.
GATHER_MIN_RATIO_CPU = 256
GATHER_MIN_RATIO_CUDA = 1024


def choose_path(device: torch.device, rank: int, top_k: int, block_size: int = 1) -> str:
    """The compute path ``path="auto"`` uses for a layer on ``device``: rank over active ranks."""
    ratio = rank / (top_k * block_size)
    limit = GATHER_MIN_RATIO_CPU if device.type == "cpu" else GATHER_MIN_RATIO_CUDA
    return "gathered" if ratio >= limit else "dense"


class _MaskSlot:
    """The attention mask of the forward in flight, shared by all SMoRA layers of one model."""

    __slots__ = ("mask",)

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


def _in_backward() -> bool:
    # Gradient checkpointing (reentrant or not) recomputes forwards inside the autograd engine;
    # a graph task id is set exactly then. Private but stable since torch 1.x; if it disappears
    # we count recomputes too (the pre-fix behaviour) rather than fail.
    try:
        return torch._C._current_graph_task_id() != -1
    except AttributeError:  # pragma: no cover
        return False


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)  # torch >= 2.4
    except TypeError:  # pragma: no cover - older torch
        if device.type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class SMoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with a routed rank-wise LoRA (SMoRA). See the module docstring.

    Trainable: ``lora_A`` (rank x in), ``lora_B`` (out x rank), ``router.weight`` (E x in), with
    E = rank / block_size blocks. Buffers: ``balance_bias`` (E, float32, saved), and
    non-persistent token counters (per block).
    """

    def __init__(self, base_layer: nn.Linear, config: SMoRAConfig | None = None) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise MergeConfigError(f"SMoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        cfg = config if config is not None else SMoRAConfig()
        cfg.validate()
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.rank = cfg.rank
        self.top_k = cfg.top_k
        self.block_size = cfg.block_size
        self.n_blocks = cfg.n_blocks
        self.lora_alpha = float(cfg.lora_alpha)
        self.scale = cfg.scale
        self.balance = cfg.balance
        self.balance_rate = float(cfg.balance_rate)
        self.path = cfg.path
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

        w = base_layer.weight
        kw = {"device": w.device, "dtype": w.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.rank, **kw))
        self.router = nn.Linear(self.in_features, self.n_blocks, bias=False, **kw)
        self.register_buffer("balance_bias", torch.zeros(self.n_blocks, device=w.device))
        zeros = torch.zeros(self.n_blocks, dtype=torch.int64, device=w.device)
        # Tokens per block since the last balance step (training forwards only) ...
        self.register_buffer("balance_counts", zeros.clone(), persistent=False)
        # ... and since the last reset_routing_stats (every counted forward), for routing_stats.
        self.register_buffer("usage_counts", zeros.clone(), persistent=False)
        self.mask_slot = _MaskSlot()
        self._warned_mask = False
        self.reset_parameters()

    # -- parameters -------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """PEFT's LoRA init (A kaiming-uniform, B zeros: the adapter starts at exactly 0);
        router: torch's default ``nn.Linear`` init, as in the authors' code."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        self.router.reset_parameters()
        with torch.no_grad():
            self.balance_bias.zero_()
            self.balance_counts.zero_()
            self.usage_counts.zero_()

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (some model code reads ``proj.weight.dtype`` and the like)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Keep beta float32 through .to(bf16)/.half(): its 1e-5 steps would round away.
        beta = self.balance_bias
        super()._apply(fn, recurse)
        if self.balance_bias.dtype != torch.float32:
            self.balance_bias = beta.detach().to(self.balance_bias.device, torch.float32)
        return self

    # -- routing ----------------------------------------------------------------------------

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits (tokens x E) -> (block indices, gates), both (tokens x k); gates in float32,
        summing to k per token. Routing math runs in float32 whatever the compute dtype, so
        the bias's small steps and near-ties are resolved the same way under autocast."""
        s = torch.sigmoid(logits.float())
        top, idx = (s + self.balance_bias).topk(self.top_k, dim=-1, sorted=False)
        gates = top * (self.top_k / top.sum(dim=-1, keepdim=True))
        return idx, gates

    def _resolve_path(self, device: torch.device) -> str:
        if self.path != "auto":
            return self.path
        return choose_path(device, self.rank, self.top_k, self.block_size)

    # -- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.lora_A.dtype and not _autocast_on(x.device):
            x2 = x2.to(self.lora_A.dtype)  # e.g. a float32 adapter on a bf16 base
        path = self._resolve_path(x.device)
        xd = self.dropout(x2)
        h = None
        if path == "dense" and isinstance(self.dropout, nn.Identity):
            # One GEMM for the router and the A projection: both read the same x.
            hr = F.linear(x2, torch.cat([self.lora_A, self.router.weight], dim=0))
            h, logits = hr.split([self.rank, self.n_blocks], dim=-1)
        else:
            logits = self.router(x2)
        idx, gates = self.route(logits)
        self._count(idx, lead)
        w = gates * self.scale
        if path == "dense":
            if h is None:
                h = F.linear(xd, self.lora_A)
            gate_mat = torch.zeros(idx.shape[0], self.n_blocks, device=w.device, dtype=w.dtype).scatter(-1, idx, w)
            if self.block_size > 1:
                gate_mat = gate_mat.repeat_interleave(self.block_size, dim=-1)  # block gate -> its ranks
            delta = F.linear(h * gate_mat.to(h.dtype), self.lora_B)
        else:
            # F.embedding is a row gather whose backward is a dense, sorted scatter-add (faster
            # on CPU than index_select's index_add).
            if self.block_size > 1:
                offs = torch.arange(self.block_size, device=idx.device)
                idx = (idx.unsqueeze(-1) * self.block_size + offs).flatten(1)  # ranks of the blocks
                w = w.repeat_interleave(self.block_size, dim=-1)
            a_sel = F.embedding(idx, self.lora_A)  # (n, k, d_in)
            hk = torch.bmm(a_sel, xd.unsqueeze(-1)).squeeze(-1)  # (n, k)
            b_sel = F.embedding(idx, self.lora_B.t())  # (n, k, d_out)
            delta = torch.bmm((hk * w.to(hk.dtype)).unsqueeze(1), b_sel).squeeze(1)
        return out + delta.view(*lead, self.out_features).to(out.dtype)

    # -- balance ----------------------------------------------------------------------------

    def _token_weights(self, lead: torch.Size) -> torch.Tensor | None:
        m = self.mask_slot.mask
        if m is None:
            return None
        if tuple(m.shape) == tuple(lead):
            return (m != 0).reshape(-1).to(torch.int64)
        # E.g. a module that sees reshaped tokens, or cached decoding (mask covers the past).
        if self.training and self.balance and not self._warned_mask:
            self._warned_mask = True
            warnings.warn(
                f"SMoRA: attention mask of shape {tuple(m.shape)} does not match the token "
                f"shape {tuple(lead)} of a {self.in_features}->{self.out_features} layer; "
                "counting all of its tokens for load balancing",
                stacklevel=3,
            )
        return None

    @torch.no_grad()
    def _count(self, idx: torch.Tensor, lead: torch.Size) -> None:
        if _in_backward():
            return  # a gradient-checkpointing recompute: this forward was counted already
        n, k = idx.shape
        wts = self._token_weights(lead)
        if wts is None:
            wts = torch.ones(n, dtype=torch.int64, device=idx.device)
        wts = wts.to(idx.device).view(n, 1).expand(n, k).reshape(-1)
        cnt = torch.zeros(self.n_blocks, dtype=torch.int64, device=idx.device)
        cnt.index_add_(0, idx.reshape(-1), wts)
        self.usage_counts += cnt
        if self.training and self.balance:
            self.balance_counts += cnt

    @torch.no_grad()
    def balance_step(self) -> None:
        """beta_i += u * sign(mean(counts) - counts_i) over the tokens counted since the last
        step, then clears the counts. No counts (or balance off): no change. No host sync."""
        if self.balance and self.balance_rate > 0:
            # float64 keeps counts above 2**24 exact (MPS has no float64).
            dt = torch.float32 if self.balance_counts.device.type == "mps" else torch.float64
            c = self.balance_counts.to(dt)
            self.balance_bias += (torch.sign(c.mean() - c) * self.balance_rate).float()
        self.balance_counts.zero_()

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, top_k={self.top_k}, block_size={self.block_size}, lora_alpha={self.lora_alpha}, "
            f"balance={self.balance}, path={self.path}"
        )
