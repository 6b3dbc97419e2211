r"""Spline coupling layers, masking schemes, torsion shifts and the layer stack.

A coupling layer (Dinh et al. 2017, "Density estimation using Real NVP") splits the
dimensions into a conditioner group ``c`` and a transformed group ``t``; ``t`` goes
through element-wise monotonic rational-quadratic splines (Durkan et al. 2019) whose
parameters are an MLP of ``z_c``. The Jacobian is triangular, so
``log|det J| = sum_t log|dy_t/dz_t|``.

Every dimension has a *kind*:

* ``UNBOUNDED``: R, spline on ``[-tail_bound, tail_bound]`` with identity tails;
* ``BOUNDED``: ``[-1, 1]`` onto itself (bonds, angles and chiral torsions after scaling);
* ``CIRCULAR``: the circle ``[-pi, pi)`` (torsions), Rezende et al. (2020) circular
  splines; conditioners see circular inputs as ``(cos z, sin z)`` so that they are
  periodic functions of them.

Masking schemes (``coupling_masks``): ``"alternating"`` (layer ``i`` transforms the
dimensions of parity ``i mod 2``; with two dimensions, one coordinate at a time),
``"random"`` (an independent random half per layer) and ``"all2all"`` (TA-BG's ALL->ALL
blocks: a random split of all dimensions, whatever their kind, into two halves, a layer
transforming one half given the other, then the reverse layer with the roles swapped).

``TorsionShift`` adds a fixed random phase to every circular dimension: a rotation of
the torus, volume preserving (log-det 0), which moves the point every circular spline
keeps fixed (``-pi``) between layers (TA-BG's random torsion shifts).

Direction convention for every layer and for ``SplineFlow``: ``forward`` maps latent
to data, ``inverse=True`` maps data to latent; the returned log-det is ``log|det|`` of
the map actually applied.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from openmm_cmt.flows.splines import (
    interval_rational_quadratic_spline,
    unbounded_rational_quadratic_spline,
    wrap_angle,
)

UNBOUNDED = 0
BOUNDED = 1
CIRCULAR = 2
KIND_NAMES = {UNBOUNDED: "unbounded", BOUNDED: "bounded", CIRCULAR: "circular"}

MASKING_SCHEMES = ("alternating", "random", "all2all")


def _as_kinds(kinds) -> List[int]:
    kinds = [int(k) for k in torch.as_tensor(kinds).reshape(-1).tolist()]
    bad = sorted({k for k in kinds if k not in KIND_NAMES})
    if bad:
        raise ValueError(f"dimension kinds must be {UNBOUNDED} (unbounded), {BOUNDED} (bounded) or {CIRCULAR} (circular), got {bad}")
    return kinds


class MLP(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with SiLU; the output layer starts at
    zero so that a freshly built coupling layer is the identity."""

    def __init__(self, n_in: int, n_out: int, hidden: int, depth: int):
        super().__init__()
        if depth < 1 or hidden < 1:
            raise ValueError(f"MLP needs depth >= 1 and hidden >= 1, got depth={depth}, hidden={hidden}")
        layers: List[nn.Module] = []
        width = n_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        out = nn.Linear(width, n_out)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SplineCoupling(nn.Module):
    """One coupling layer over dimensions of mixed kinds.

    Parameters
    ----------
    kinds
        kind of every dimension, ``[dim]``.
    transformed
        indices of the dimensions this layer transforms; the others condition it.
        Both groups must be non-empty.
    hidden, depth
        conditioner MLP width and number of hidden layers.
    n_bins
        spline bins.
    tail_bound
        spline interval half-width for UNBOUNDED dimensions.
    """

    def __init__(self, kinds: Sequence[int], transformed: Sequence[int], hidden: int = 128, depth: int = 2, n_bins: int = 8, tail_bound: float = 5.0):
        super().__init__()
        kinds = _as_kinds(kinds)
        dim = len(kinds)
        transformed = sorted({int(i) for i in transformed})
        if not transformed or len(transformed) == dim:
            raise ValueError(f"a coupling layer needs non-empty transformed and conditioner groups; got {len(transformed)} of {dim} dimensions transformed")
        if transformed[0] < 0 or transformed[-1] >= dim:
            raise ValueError(f"transformed indices must lie in [0, {dim}), got {transformed}")
        if n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        conditioner = [i for i in range(dim) if i not in set(transformed)]
        self.n_bins = int(n_bins)
        self.tail_bound = float(tail_bound)

        def pick(group: List[int], kind: int) -> torch.Tensor:
            return torch.tensor([i for i in group if kinds[i] == kind], dtype=torch.long)

        self.register_buffer("cond_circular", pick(conditioner, CIRCULAR))
        self.register_buffer("cond_linear", torch.tensor([i for i in conditioner if kinds[i] != CIRCULAR], dtype=torch.long))
        self.register_buffer("t_circular", pick(transformed, CIRCULAR))
        self.register_buffer("t_bounded", pick(transformed, BOUNDED))
        self.register_buffer("t_unbounded", pick(transformed, UNBOUNDED))
        self.n_circular = int(self.t_circular.numel())
        self.n_bounded = int(self.t_bounded.numel())
        self.n_unbounded = int(self.t_unbounded.numel())
        # Circular and bounded dimensions go through one spline call
        # (``interval_rational_quadratic_spline``), circular ones first.
        self.register_buffer("t_interval", torch.cat([self.t_circular, self.t_bounded]), persistent=False)
        self.n_interval = self.n_circular + self.n_bounded
        self.register_buffer("interval_half_width", torch.tensor([math.pi] * self.n_circular + [1.0] * self.n_bounded), persistent=False)
        self.register_buffer("interval_periodic", torch.tensor([True] * self.n_circular + [False] * self.n_bounded), persistent=False)
        # Parameters per dimension: K widths + K heights + slopes (K circular, K + 1
        # bounded with free end slopes, K - 1 unbounded with unit end slopes).
        k = self.n_bins
        self.size_circular = self.n_circular * 3 * k
        self.size_bounded = self.n_bounded * (3 * k + 1)
        self.size_unbounded = self.n_unbounded * (3 * k - 1)
        n_features = 2 * int(self.cond_circular.numel()) + int(self.cond_linear.numel())
        self.conditioner = MLP(n_features, self.size_circular + self.size_bounded + self.size_unbounded, hidden, depth)
        # The output is one gather from [z, y_circular, y_bounded, y_unbounded]: column i
        # of the output is column out_index[i] there. A gather (not index_copy into z)
        # keeps torch.compile's backward exact; Inductor on CPU (torch 2.9) returned wrong
        # gradients for chained index_copy.
        out_index = list(range(dim))
        for position, i in enumerate(self.t_circular.tolist() + self.t_bounded.tolist() + self.t_unbounded.tolist()):
            out_index[i] = dim + position
        self.register_buffer("out_index", torch.tensor(out_index, dtype=torch.long), persistent=False)

    def _features(self, z: torch.Tensor) -> torch.Tensor:
        angles = z.index_select(1, self.cond_circular)
        return torch.cat([z.index_select(1, self.cond_linear), torch.cos(angles), torch.sin(angles)], dim=1)

    def forward(self, z: torch.Tensor, inverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = z.shape[0]
        k = self.n_bins
        # ``split`` rather than slicing: the backward of a split is one concatenation,
        # that of each slice a zero-filled copy of the whole conditioner output.
        p_circular, p_bounded, p_unbounded = self.conditioner(self._features(z)).split(
            [self.size_circular, self.size_bounded, self.size_unbounded], dim=1
        )
        columns = [z]
        logdet = torch.zeros(batch, dtype=z.dtype, device=z.device)
        if self.n_interval > 0:
            w_c, h_c, d_c = p_circular.reshape(batch, self.n_circular, 3 * k).split([k, k, k], dim=-1)
            w_b, h_b, d_b = p_bounded.reshape(batch, self.n_bounded, 3 * k + 1).split([k, k, k + 1], dim=-1)
            # A circular dimension's slope at pi is its slope at -pi: the padding is ignored.
            y, ld = interval_rational_quadratic_spline(
                z.index_select(1, self.t_interval),
                torch.cat([w_c, w_b], dim=1),
                torch.cat([h_c, h_b], dim=1),
                torch.cat([F.pad(d_c, (0, 1)), d_b], dim=1),
                self.interval_half_width,
                self.interval_periodic,
                inverse=inverse,
            )
            columns.append(y)
            logdet = logdet + ld.sum(1)
        if self.n_unbounded > 0:
            w, h, d = p_unbounded.reshape(batch, self.n_unbounded, 3 * k - 1).split([k, k, k - 1], dim=-1)
            y, ld = unbounded_rational_quadratic_spline(
                z.index_select(1, self.t_unbounded), w, h, d, self.tail_bound, inverse=inverse
            )
            columns.append(y)
            logdet = logdet + ld.sum(1)
        return torch.cat(columns, dim=1).index_select(1, self.out_index), logdet


class TorsionShift(nn.Module):
    """``z_i -> wrap(z_i + phase_i)`` on circular dimensions, fixed random phases; log-det 0."""

    def __init__(self, kinds: Sequence[int], generator: torch.Generator):
        super().__init__()
        kinds = _as_kinds(kinds)
        circular = [i for i, k in enumerate(kinds) if k == CIRCULAR]
        self.register_buffer("index", torch.tensor(circular, dtype=torch.long))
        phases = (torch.rand(len(circular), generator=generator, dtype=torch.float64) * 2.0 - 1.0) * math.pi
        self.register_buffer("phase", phases.to(torch.get_default_dtype()))

        mask = torch.zeros(len(kinds), dtype=torch.bool)
        mask[circular] = True
        self.register_buffer("is_circular", mask, persistent=False)

    def forward(self, z: torch.Tensor, inverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        # Element-wise over all dimensions (no index_copy, see SplineCoupling.forward).
        phase = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device).index_put((self.index,), self.phase.to(z.dtype))
        shift = -phase if inverse else phase
        out = torch.where(self.is_circular, wrap_angle(z + shift), z)
        return out, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


def coupling_masks(dim: int, n_layers: int, scheme: str = "alternating", generator: torch.Generator | None = None) -> List[List[int]]:
    """Transformed-dimension indices of each of ``n_layers`` coupling layers.

    ``"alternating"``: parity ``i mod 2``; ``"random"``: an independent random half per
    layer; ``"all2all"``: pairs (random half, its complement) as TA-BG's ALL->ALL blocks
    and their reverses (an odd ``n_layers`` ends with an unpaired random half).
    """
    if dim < 2:
        raise ValueError(f"coupling flows need at least 2 dimensions, got {dim}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    if scheme not in MASKING_SCHEMES:
        raise ValueError(f"unknown masking scheme {scheme!r}; expected one of {MASKING_SCHEMES}")
    masks: List[List[int]] = []
    half = dim // 2
    for i in range(n_layers):
        if scheme == "alternating":
            masks.append([j for j in range(dim) if j % 2 == i % 2])
        elif scheme == "random" or i % 2 == 0:
            perm = torch.randperm(dim, generator=generator).tolist()
            masks.append(sorted(perm[: (dim + 1) // 2 if i % 2 == 0 else half]))
        else:
            previous = set(masks[-1])
            masks.append([j for j in range(dim) if j not in previous])
    return masks


class SplineFlow(nn.Module):
    """A stack of spline coupling layers (and torsion shifts) over dimensions of given kinds.

    ``forward(z) -> (x, log|det dx/dz|)`` maps latent to data; ``inverse(x) -> (z,
    log|det dz/dx|)``. The kinds of the latent and data spaces are the same.

    Parameters
    ----------
    kinds
        ``[dim]`` of UNBOUNDED / BOUNDED / CIRCULAR.
    n_layers
        coupling layers.
    hidden, depth
        conditioner MLP width and hidden-layer count.
    n_bins
        spline bins.
    masking
        ``"alternating"``, ``"random"`` or ``"all2all"`` (see ``coupling_masks``).
    torsion_shifts
        insert a ``TorsionShift`` after every coupling layer but the last when there
        are circular dimensions.
    tail_bound
        spline interval half-width for UNBOUNDED dimensions.
    seed
        seeds masks, shifts and the initial weights.
    """

    def __init__(
        self,
        kinds: Sequence[int],
        n_layers: int = 8,
        hidden: int = 128,
        depth: int = 2,
        n_bins: int = 8,
        masking: str = "alternating",
        torsion_shifts: bool = True,
        tail_bound: float = 5.0,
        seed: int = 0,
    ):
        super().__init__()
        kinds = _as_kinds(kinds)
        self.dim = len(kinds)
        self.register_buffer("kinds", torch.tensor(kinds, dtype=torch.long))
        generator = torch.Generator().manual_seed(int(seed))
        masks = coupling_masks(self.dim, n_layers, masking, generator)
        has_circular = CIRCULAR in kinds
        layers: List[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            for i, mask in enumerate(masks):
                layers.append(SplineCoupling(kinds, mask, hidden, depth, n_bins, tail_bound))
                if torsion_shifts and has_circular and i < len(masks) - 1:
                    layers.append(TorsionShift(kinds, generator))
        self.layers = nn.ModuleList(layers)
        # TorchScript cannot iterate a ModuleList backwards, so the inverse walks a second
        # list holding the same modules; the state-dict hooks keep one copy of each
        # tensor in checkpoints.
        self.reversed_layers = nn.ModuleList(layers[::-1])
        self._register_state_dict_hook(_drop_reversed_keys)
        self._register_load_state_dict_pre_hook(_fill_reversed_keys, with_module=True)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in self.layers:
            z, ld = layer(z, False)
            logdet = logdet + ld
        return z, logdet

    @torch.jit.export
    def inverse(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.reversed_layers:
            x, ld = layer(x, True)
            logdet = logdet + ld
        return x, logdet

    @torch.jit.unused
    def compile_regions(self) -> List[Tuple[nn.Module, str]]:
        """``(module, method name)`` of the blocks worth compiling one by one (regional
        compilation): every coupling layer's ``forward`` (torsion shifts are a single
        addition)."""
        return [(layer, "forward") for layer in self.layers if isinstance(layer, SplineCoupling)]


def _drop_reversed_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "reversed_layers.")]:
        del state_dict[key]
    return state_dict


def _fill_reversed_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    n = len(module.layers)
    head = prefix + "layers."
    for key in [k for k in state_dict if k.startswith(head)]:
        index, _, rest = key[len(head) :].partition(".")
        state_dict[f"{prefix}reversed_layers.{n - 1 - int(index)}.{rest}"] = state_dict[key]


def maybe_compile(module_or_fn, enabled: bool = True, **kwargs):
    """``torch.compile(module_or_fn, **kwargs)`` when enabled and available, else the input.

    For training speed on GPU (fusion of the spline arithmetic); the eager object stays
    the one to script, save and export. Compilation errors surface at the first call,
    so try a step before a long run.
    """
    if not enabled or not hasattr(torch, "compile"):
        return module_or_fn
    return torch.compile(module_or_fn, **kwargs)
