"""Targets: unnormalised log densities log p~(x) with an exact count of evaluations.

A target is anything with ``log_prob(x) -> [B]`` (float64, unnormalised, differentiable
in ``x`` where the reverse-KL baseline needs it) and an ``n_evaluations`` attribute that
counts every sample evaluated (the budget that papers report as "target evaluations").
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

from openmm_cmt.energy.regularization import linlog_cut


@runtime_checkable
class Target(Protocol):
    """Unnormalised target density p~(x) = Z p(x)."""

    n_evaluations: int

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p~(x), shape [B], float64."""
        ...


class FunctionTarget:
    """A target given by a torch function ``log_prob_fn(x) -> [B]`` (toy targets).

    Every call adds the batch size to ``n_evaluations``.
    """

    def __init__(self, log_prob_fn: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(log_prob_fn):
            raise ValueError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
        self._fn = log_prob_fn
        self.n_evaluations = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"x must have a leading batch dimension of size >= 1, got shape {tuple(x.shape)}")
        self.n_evaluations += x.shape[0]
        out = self._fn(x).to(torch.float64)
        if out.shape != (x.shape[0],):
            raise ValueError(f"log_prob_fn must return shape [{x.shape[0]}], got {tuple(out.shape)}")
        return out


class _ReducedEnergy(torch.autograd.Function):
    """u(x) from an energy engine, with du/dx = -forces/kT as the backward pass."""

    @staticmethod
    def forward(ctx, x, engine):
        if x.requires_grad:
            u, minus_grad = engine.reduced_energy(x.detach(), forces=True)
            ctx.save_for_backward(torch.as_tensor(minus_grad, dtype=x.dtype, device=x.device))
        else:
            u = engine.reduced_energy(x.detach())
        return torch.as_tensor(u, dtype=torch.float64, device=x.device)

    @staticmethod
    def backward(ctx, grad_u):
        (minus_grad,) = ctx.saved_tensors
        # Clashes can give non-finite forces; a zero gradient is safer than a NaN step.
        minus_grad = torch.nan_to_num(minus_grad, nan=0.0, posinf=0.0, neginf=0.0)
        return -grad_u.to(minus_grad.dtype)[:, None, None] * minus_grad, None


class BoltzmannTarget:
    r"""Boltzmann density of an energy engine: log p~(x) = -cut(u(x)), u = E/kT.

    Parameters
    ----------
    energy_engine
        an ``openmm_cmt.energy.EnergyEngine`` (positions [B, n_atoms, 3]
        in nm). Its own counter is exact; ``n_evaluations`` reports it.
    regularize
        map applied to reduced energies before negation (default
        ``linlog_cut``, which keeps clashes from dominating); None for raw energies.

    Notes
    -----
    ``log_prob`` is differentiable in ``x`` through the engine's forces when ``x``
    requires grad (one energy+force evaluation per sample, counted once).
    """

    def __init__(self, energy_engine, regularize: Callable | None = linlog_cut):
        for attr in ("reduced_energy", "n_evaluations"):
            if not hasattr(energy_engine, attr):
                raise ValueError(f"energy_engine must be an EnergyEngine (missing {attr!r})")
        self.engine = energy_engine
        self.regularize = regularize

    @property
    def n_evaluations(self) -> int:
        return self.engine.n_evaluations

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        self.engine.check_positions(x)
        u = _ReducedEnergy.apply(x, self.engine)
        if self.regularize is not None:
            u = self.regularize(u)
        return -u
