"""What ``weights`` mean, for every merge method, and how they reach PEFT's combinations.

The rule (README "Weights"): ``weights`` are task-arithmetic coefficients. Every method's target
is ``T = Σ_j w_j·ΔW_j``; the default weights are 1/N, so the default target is the mean of the
sources. Each method approximates T its own way, and on a pool of N copies of one adapter every
method returns T, to float rounding (tests/test_weights.py; pruning methods at density 1).

PEFT's ``add_weighted_adapter`` gives its weights other meanings: ``cat`` and ``svd`` reach
Σ w·ΔW, but ``linear``/``ties``/``dare_*``/``magnitude_prune`` weight the A's by sign(w)·√|w|
and the B's by √|w|, and the TIES methods divide by the number of agreeing adapters. Each of
PEFT's combinations is homogeneous of degree one in its weights (``PEFT(c·w) = c·PEFT(w)`` for
every real c: pruning and sign election look at the unweighted tensors), so the rule's weights w
map to PEFT's weights ``p = c(w)·w`` with one scalar c per merge, chosen so that N copies of one
adapter merge to (Σ w)·ΔW. With ``g(w)`` PEFT's result on those copies in units of ΔW,
``c(w) = Σ w / g(w)``; ``baselines._PEFT_FACTORS`` holds c per method:

- ``cat``, ``svd``, ``dare_linear_svd``, ``magnitude_prune_svd``: g = Σ w, c = 1 (PEFT's
  weights are the rule's).
- ``linear``, ``dare_linear``, ``magnitude_prune``: g = (Σ sign(w_j)·√|w_j|)·(Σ √|w_j|), so
  c = Σ w / g (1/N for the default 1/N: the product of the mean A and the mean B).
- ``ties``, ``dare_ties``: g = (Σ sign(w_j)·√|w_j|)·(Σ √|w_j|) / N², c = N²·Σ w / g.
- ``ties_svd``, ``dare_ties_svd``: g = Σ w / N, c = N (the default gives TIES' disjoint mean).

``rw.merge(..., peft_weights=p)`` runs the combination with p as given: PEFT's numerics for
``add_weighted_adapter(..., weights=p)`` (tests/test_baselines.py). The rule's weights equivalent to p are ``p / c(p)``.
Where c(w) is 0 or undefined (the signed roots cancel, or Σ w = 0 for a method whose scale is
calibrated on copies), the rule cannot be met and an ``OptionError`` says to pass peft_weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

#: One line stating the rule, printed by ``rankwise methods``.
RULE = "weights are task-arithmetic coefficients: every method's target is Σ_j w_j·ΔW_j; default w_j = 1/N (the mean)"

#: ``c(w)``: run PEFT's combination with ``c(w)·w`` to meet the rule (module docstring).
PeftFactor = Callable[[np.ndarray], float]

# |c| below this share of the weights' scale counts as 0 (the weights cancel in float64).
_CANCEL = 1e-9


def _roots(w: np.ndarray) -> float:
    """(Σ sign(w_j)·√|w_j|)·(Σ √|w_j|): PEFT's A-side times B-side weight on copies of one adapter."""
    r = np.sqrt(np.abs(w))
    return float(np.sum(np.sign(w) * r) * np.sum(r))


def _ratio(method: str, w: np.ndarray, num: float, den: float) -> float:
    scale = float(np.sum(np.abs(w)))
    if abs(den) <= _CANCEL * scale or abs(num) <= _CANCEL * scale:
        raise OptionError(
            f"method {method!r} cannot merge to Σ w_j·ΔW_j with weights {[float(x) for x in w]}: on copies "
            f"of one adapter its combination gives {den:.6g}·ΔW for a target of {num:.6g}·ΔW; pass "
            "peft_weights= for PEFT's add_weighted_adapter numerics with these weights"
        )
    return num / den


def unit(w: np.ndarray) -> float:
    """c = 1"""
    return 1.0


def linear_family(method: str) -> PeftFactor:
    """c(w) of linear, dare_linear, magnitude_prune (the A's and B's summed with √|w|)."""

    def factor(w: np.ndarray) -> float:
        """c = Σw / ((Σ sign(w)·√|w|)·(Σ √|w|))"""
        return _ratio(method, w, float(np.sum(w)), _roots(w))

    return factor


def ties_family(method: str) -> PeftFactor:
    """c(w) of TIES on the factors (a disjoint mean of each side, weighted with √|w|)."""

    def factor(w: np.ndarray) -> float:
        """c = N²·Σw / ((Σ sign(w)·√|w|)·(Σ √|w|))"""
        return _ratio(method, w, float(np.sum(w)) * w.size**2, _roots(w))

    return factor


def ties_delta(w: np.ndarray) -> float:
    """c = N"""  # TIES on the dense deltas divides the weighted sum by the agreeing count.
    return float(w.size)


def describe(factor: PeftFactor | None) -> str:
    """What a method's weights are, for ``rankwise methods``: PEFT's weights c·w, c as a formula."""
    if factor is None:
        return "no PEFT counterpart: weights w as the rule says"
    return f"PEFT's weights = c·w, {(factor.__doc__ or '').strip()}"


@dataclass(frozen=True)
class Weighting:
    """The weights of one merge: ``rule`` (w in Σ w_j·ΔW_j; None where peft_weights have no
    equivalent), ``run`` (what the method computes with) and ``peft`` (PEFT's weights, for a
    method with a PEFT counterpart)."""

    rule: np.ndarray | None
    run: np.ndarray
    peft: np.ndarray | None

    def info(self) -> dict[str, list[float] | None]:
        """For merge_info: the rule's weights and, for a PEFT method, PEFT's."""
        out: dict[str, list[float] | None] = {"weights": None if self.rule is None else _floats(self.rule)}
        if self.peft is not None:
            out["peft_weights"] = _floats(self.peft)
        return out


def _floats(w: np.ndarray) -> list[float]:
    return [float(x) for x in w]


def resolve(
    method: str, factor: PeftFactor | None, weights: np.ndarray | None, peft_weights: np.ndarray | None
) -> Weighting:
    """The weights a merge runs with. ``weights``/``peft_weights``: validated arrays or None (at
    most one given); ``factor``: the method's c(w), None for a method without a PEFT counterpart."""
    if peft_weights is not None:
        if factor is None:
            raise OptionError(
                f"method {method!r} has no PEFT counterpart, so peft_weights= does not apply; pass weights= "
                "(task-arithmetic coefficients: the target is Σ_j w_j·ΔW_j)"
            )
        try:
            rule: np.ndarray | None = peft_weights / factor(peft_weights)
        except OptionError:
            rule = None  # PEFT's result is not Σ w·ΔW for any w (its scale cancels on copies)
        return Weighting(rule, peft_weights, peft_weights)
    assert weights is not None
    if factor is None:
        return Weighting(weights, weights, None)
    p = weights * factor(weights)
    return Weighting(weights, p, p)
