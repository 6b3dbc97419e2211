r"""Monotonic rational-quadratic splines: bounded, with identity tails, and circular.

Element-wise bijections whose knots come from unconstrained parameters (the output of
a conditioner), as in Neural Spline Flows (Durkan et al. 2019, "Neural Spline Flows",
NeurIPS, arXiv:1906.04032), built on the rational-quadratic interpolant of Gregory &
Delbourgo (1982, IMA J. Numer. Anal. 2, 123). The circular variant follows Rezende et
al. (2020, "Normalizing Flows on Tori and Spheres", ICML, arXiv:2002.02428).

Maths. ``K`` bins with knots ``(x_k, y_k)``, ``k = 0..K``, and positive knot slopes
``d_k``. In bin ``k`` let ``w_k = x_{k+1} - x_k``, ``h_k = y_{k+1} - y_k``,
``s_k = h_k / w_k`` and ``xi = (x - x_k) / w_k`` in [0, 1]. Then

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_k + d_{k+1} - 2 s_k) xi (1 - xi)]^2

which is strictly increasing and C^1. The inverse solves ``a xi^2 + b xi + c = 0`` with

    a = h_k (s_k - d_k) + (y - y_k) (d_k + d_{k+1} - 2 s_k)
    b = h_k d_k - (y - y_k) (d_k + d_{k+1} - 2 s_k)
    c = -s_k (y - y_k)

taking the root ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` (the numerically stable form of the
root in [0, 1]).

Parametrisation. Bin widths are ``min_bin_width + (1 - K min_bin_width) softmax(w)``
times the interval length (heights likewise); slopes are
``min_derivative + softplus(d + c)`` with ``c`` chosen so that ``d = 0`` gives slope 1.
All-zero parameters therefore give the identity map, a convenient initialisation.
The minima keep every bin and slope away from zero, which bounds ``|log dy/dx|``.

Boundary handling (documented contract):

* ``rational_quadratic_spline`` (bounded): inputs are clamped into the interval
  (``[left, right]`` forward, ``[bottom, top]`` inverse) before evaluation, so values a
  rounding error outside the bounds are mapped to the end point. Callers that must
  reject out-of-support values check them before (the Generator does).
* ``unbounded_rational_quadratic_spline``: the identity outside ``[-B, B]`` (linear
  tails with slope 1, log-det 0); the end slopes are fixed to 1 so the map is C^1.
* ``circular_rational_quadratic_spline``: inputs are wrapped into ``[-pi, pi)``; the
  first and last slope are shared so the map is a C^1 diffeomorphism of the circle
  that fixes the point ``-pi == pi``; outputs are wrapped into ``[-pi, pi)``.

All functions are TorchScript-compatible and act element-wise on ``inputs [...]`` with
parameters ``[..., K]`` (or ``K + 1``, ``K - 1`` slopes as stated).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _knots(unnormalized: torch.Tensor, lower: float, upper: float, min_size: float) -> torch.Tensor:
    """Knot positions ``[..., K + 1]`` from lower to upper (both exact)."""
    n_bins = unnormalized.shape[-1]
    # softmax written out: torch.softmax over a last dimension of ~8 is several times
    # slower on CPU than these element-wise ops. The shift by the maximum only guards
    # exp against overflow and cancels in the ratio, so it is taken out of the graph:
    # the backward of amax would cost more than the rest of the softmax.
    exp = torch.exp(unnormalized - unnormalized.detach().amax(dim=-1, keepdim=True))
    sizes = min_size + (1.0 - min_size * n_bins) * (exp / exp.sum(dim=-1, keepdim=True))
    inner = lower + (upper - lower) * torch.cumsum(sizes[..., :-1], dim=-1)
    # Exact end knots (the cumulative sum may miss ``upper`` by a rounding error); padding
    # costs no copies in the backward pass, unlike a concatenation of filled tensors.
    return F.pad(F.pad(inner, (1, 0), value=lower), (0, 1), value=upper)


def _interval_knots(unnormalized: torch.Tensor, half_width: torch.Tensor, min_size: float) -> torch.Tensor:
    """Knot positions ``[..., n, K + 1]`` from ``-a`` to ``a`` (both exact) per dimension,
    ``half_width = a [n]``; ``_knots`` with the scaling folded into as few element-wise
    passes over the knots as the maths allows (they dominate a coupling layer's cost)."""
    n_bins = unnormalized.shape[-1]
    exp = torch.exp(unnormalized - unnormalized.detach().amax(dim=-1, keepdim=True))
    a = half_width.to(unnormalized.dtype).unsqueeze(-1)
    # Knot k = -a + 2a (k min + (1 - K min) sum_{j<k} exp_j / sum_j exp_j).
    scale = (2.0 * (1.0 - min_size * n_bins)) * a / exp.sum(dim=-1, keepdim=True)
    k = torch.arange(1, n_bins, dtype=unnormalized.dtype, device=unnormalized.device)
    inner = torch.cumsum(exp[..., :-1], dim=-1) * scale + a * (2.0 * min_size * k - 1.0)
    end = a.expand(inner.shape[:-1] + (1,))
    return torch.cat([-end, inner, end], dim=-1)


def _slopes(unnormalized: torch.Tensor, min_derivative: float) -> torch.Tensor:
    """Positive knot slopes; an unnormalized value of 0 gives slope exactly 1."""
    shift = math.log(math.expm1(1.0 - min_derivative))
    return min_derivative + F.softplus(unnormalized + shift)


def _check_params(inputs: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor, slopes: torch.Tensor, n_slopes: int):
    n_bins = widths.shape[-1]
    if heights.shape[-1] != n_bins:
        raise ValueError(f"expected as many bin heights as widths ({n_bins}), got {heights.shape[-1]}")
    if slopes.shape[-1] != n_slopes:
        raise ValueError(f"expected {n_slopes} knot slopes for {n_bins} bins, got {slopes.shape[-1]}")
    if widths.shape[:-1] != inputs.shape:
        raise ValueError(
            f"spline parameters must have shape inputs.shape + [bins] = {list(inputs.shape)} + [{n_bins}], "
            f"got {list(widths.shape)}"
        )


def _spline(
    inputs: torch.Tensor,
    cumwidths: torch.Tensor,
    cumheights: torch.Tensor,
    derivatives: torch.Tensor,
    inverse: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The spline given knots ``[..., K + 1]`` and slopes ``[..., K + 1]``; inputs inside."""
    knots = cumheights if inverse else cumwidths
    # Bin index = number of interior knots at or left of the input, in [0, K - 1].
    # One gather of (k, k + 1) from the stacked knots and slopes: its backward is a single
    # scatter, where six separate gathers would cost six. (Inductor on CPU, torch 2.9,
    # fused the backward of six separate gathers into wrong gradients; it compiles this
    # one exactly, and compiled flow calls are checked against eager on their first call.)
    bin_idx = torch.sum(inputs.unsqueeze(-1) >= knots[..., 1:-1], dim=-1, keepdim=True)
    table = torch.stack([cumwidths, cumheights, derivatives], dim=-2)
    index = torch.cat([bin_idx, bin_idx + 1], dim=-1).unsqueeze(-2).expand(table.shape[:-1] + (2,))
    (x_k, x_k1), (y_k, y_k1), (d_k, d_k1) = [pair.unbind(-1) for pair in torch.gather(table, -1, index).unbind(-2)]
    w_k = x_k1 - x_k
    h_k = y_k1 - y_k
    s_k = h_k / w_k
    curvature = d_k + d_k1 - 2.0 * s_k

    if inverse:
        dy = inputs - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        discriminant = torch.clamp(b * b - 4.0 * a * c, min=0.0)
        xi = (2.0 * c) / (-b - torch.sqrt(discriminant))
        xi = torch.clamp(xi, 0.0, 1.0)
        outputs = x_k + xi * w_k
    else:
        xi = (inputs - x_k) / w_k
        xi = torch.clamp(xi, 0.0, 1.0)
        numerator = h_k * (s_k * xi * xi + d_k * xi * (1.0 - xi))
        outputs = y_k + numerator / (s_k + curvature * xi * (1.0 - xi))

    one_minus = 1.0 - xi
    denominator = s_k + curvature * xi * one_minus
    derivative_numerator = s_k * s_k * (d_k1 * xi * xi + 2.0 * s_k * xi * one_minus + d_k * one_minus * one_minus)
    logabsdet = torch.log(derivative_numerator) - 2.0 * torch.log(denominator)
    if inverse:
        logabsdet = -logabsdet
    return outputs, logabsdet


def rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    left: float = -1.0,
    right: float = 1.0,
    bottom: float = -1.0,
    top: float = 1.0,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bounded monotonic RQ spline ``[left, right] -> [bottom, top]``.

    Parameters
    ----------
    inputs
        ``[...]``; x (forward) or y (``inverse=True``); clamped into the interval.
    unnormalized_widths, unnormalized_heights
        ``[..., K]``.
    unnormalized_derivatives
        ``[..., K + 1]``, the slopes at every knot, end points included (free end
        slopes).

    Returns
    -------
    (outputs, logabsdet) : tuple of torch.Tensor
        both ``[...]``; logabsdet is ``log|dy/dx|`` forward and ``log|dx/dy|`` inverse.
    """
    n_bins = unnormalized_widths.shape[-1]
    _check_params(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, n_bins + 1)
    if min_bin_width * n_bins >= 1.0 or min_bin_height * n_bins >= 1.0:
        raise ValueError(f"min_bin_width/height times {n_bins} bins must be below 1")
    if not (right > left and top > bottom):
        raise ValueError(f"spline interval must have right > left and top > bottom, got [{left}, {right}] x [{bottom}, {top}]")
    cumwidths = _knots(unnormalized_widths, left, right, min_bin_width)
    cumheights = _knots(unnormalized_heights, bottom, top, min_bin_height)
    derivatives = _slopes(unnormalized_derivatives, min_derivative)
    if inverse:
        inputs = torch.clamp(inputs, bottom, top)
    else:
        inputs = torch.clamp(inputs, left, right)
    return _spline(inputs, cumwidths, cumheights, derivatives, inverse)


def unbounded_rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    tail_bound: float,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RQ spline on ``[-B, B]^2`` with identity (linear, slope 1) tails outside.

    ``unnormalized_derivatives`` is ``[..., K - 1]``: the interior knot slopes; the end
    slopes are 1 so the map is C^1 across ``+-B``. A bijection of the real line.
    """
    n_bins = unnormalized_widths.shape[-1]
    _check_params(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, n_bins - 1)
    if not tail_bound > 0:
        raise ValueError(f"tail_bound must be positive, got {tail_bound}")
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    ones = torch.ones_like(unnormalized_derivatives[..., :1])
    cumwidths = _knots(unnormalized_widths, -tail_bound, tail_bound, min_bin_width)
    cumheights = _knots(unnormalized_heights, -tail_bound, tail_bound, min_bin_height)
    derivatives = torch.cat([ones, _slopes(unnormalized_derivatives, min_derivative), ones], dim=-1)
    # Evaluate every element on clamped inputs (finite everywhere, so gradients of the
    # unused branch are finite too), then keep the identity outside.
    clamped = torch.clamp(inputs, -tail_bound, tail_bound)
    outputs, logabsdet = _spline(clamped, cumwidths, cumheights, derivatives, inverse)
    outputs = torch.where(inside, outputs, inputs)
    logabsdet = torch.where(inside, logabsdet, torch.zeros_like(logabsdet))
    return outputs, logabsdet


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """``x`` mapped into ``[-pi, pi)`` modulo 2 pi."""
    return torch.remainder(x + math.pi, 2.0 * math.pi) - math.pi


def circular_rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Circular RQ spline on ``[-pi, pi)`` (Rezende et al. 2020).

    ``unnormalized_derivatives`` is ``[..., K]``: slopes at knots ``0..K-1``; the slope at
    ``pi`` equals the slope at ``-pi``, so the map and its derivative are periodic.
    Inputs are wrapped into ``[-pi, pi)`` and so are outputs.
    """
    n_bins = unnormalized_widths.shape[-1]
    _check_params(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, n_bins)
    cumwidths = _knots(unnormalized_widths, -math.pi, math.pi, min_bin_width)
    cumheights = _knots(unnormalized_heights, -math.pi, math.pi, min_bin_height)
    slopes = _slopes(unnormalized_derivatives, min_derivative)
    derivatives = torch.cat([slopes, slopes[..., :1]], dim=-1)
    outputs, logabsdet = _spline(wrap_angle(inputs), cumwidths, cumheights, derivatives, inverse)
    return wrap_angle(outputs), logabsdet


def interval_rational_quadratic_spline(
    inputs: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    half_width: torch.Tensor,
    periodic: torch.Tensor,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""RQ splines of ``[-a_i, a_i]`` onto itself, bounded and circular dimensions in one call.

    Dimension ``i`` (the last axis of ``inputs``) has half-width ``a_i``; where
    ``periodic[i]`` it is a circle of circumference ``2 a_i`` (as
    ``circular_rational_quadratic_spline`` with ``a_i = pi``: inputs and outputs wrapped
    into ``[-a_i, a_i)``, the slope at ``a_i`` that at ``-a_i``, so the last of its
    ``K + 1`` unnormalized slopes is ignored), elsewhere an interval (as
    ``rational_quadratic_spline``: inputs clamped, free end slopes). One call does the
    work of one call per kind, which halves the element-wise operations a coupling
    layer runs on small tensors.

    Parameters
    ----------
    inputs
        ``[..., n]``.
    unnormalized_widths, unnormalized_heights
        ``[..., n, K]``.
    unnormalized_derivatives
        ``[..., n, K + 1]``.
    half_width
        ``[n]``, positive.
    periodic
        ``[n]`` bool.

    Returns
    -------
    (outputs, logabsdet) : tuple of torch.Tensor
        both ``[..., n]``.
    """
    n_bins = unnormalized_widths.shape[-1]
    _check_params(inputs, unnormalized_widths, unnormalized_heights, unnormalized_derivatives, n_bins + 1)
    if half_width.shape != inputs.shape[-1:] or periodic.shape != inputs.shape[-1:]:
        raise ValueError(f"half_width and periodic must have shape [{inputs.shape[-1]}], got "
                         f"{list(half_width.shape)} and {list(periodic.shape)}")
    cumwidths = _interval_knots(unnormalized_widths, half_width, min_bin_width)
    cumheights = _interval_knots(unnormalized_heights, half_width, min_bin_height)
    slopes = _slopes(unnormalized_derivatives, min_derivative)
    last = torch.arange(n_bins + 1, device=inputs.device) == n_bins
    slopes = torch.where(periodic.unsqueeze(-1) & last, slopes[..., :1], slopes)
    a = half_width.to(inputs.dtype)
    inside = torch.where(periodic, torch.remainder(inputs + a, 2.0 * a) - a, torch.clamp(inputs, -a, a))
    outputs, logabsdet = _spline(inside, cumwidths, cumheights, slopes, inverse)
    return torch.where(periodic, torch.remainder(outputs + a, 2.0 * a) - a, outputs), logabsdet
