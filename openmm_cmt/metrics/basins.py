r"""Backbone basins of the Ramachandran plot, their reweighted populations, and a
mode-collapse verdict.

Each residue's (phi, psi) plane is split into three basins that cover it completely
(angles in degrees, on :math:`(-180, 180]`):

- ``alpha_R``: phi <= 0 and -120 < psi <= 50 (right-handed helix);
- ``beta/PPII``: phi <= 0 and (psi > 50 or psi <= -120) (extended strand, polyproline
  II, and alanine dipeptide's C7eq);
- ``alpha_L/C7ax``: phi > 0 (left-handed helix and C7ax; the minor basins, well under
  1 % of the mass for alanine at 300 K).

The psi boundaries follow the free-energy barriers of alanine's map (the alpha_R to
beta saddle near psi = 50 and the ridge near psi = -120 between the bridge region and
the wrapped-around beta basin); phi = 0 is the barrier that separates the minor basins.

A population from N weighted samples is the self-normalised mean of the basin's
indicator, with the delta-method standard error. That error is zero when no sample
lands in the basin, which hides exactly the failure one looks for; so every population
also gets one-sided 95 % bounds from the binomial with n = Kish's ESS of the weights
(Clopper-Pearson, continuous in the count): with no sample the upper bound is
:math:`1 - 0.05^{1/\mathrm{ESS}} \approx 3/\mathrm{ESS}` (the rule of three).
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Basin names, in the order of :func:`basin_index`.
BASINS = ("alpha_R", "beta/PPII", "alpha_L/C7ax")
#: psi bounds of alpha_R (radians): (-120, 50] degrees.
ALPHA_R_PSI = (np.deg2rad(-120.0), np.deg2rad(50.0))
#: A reference basin with at least this mass must be found by the generator.
COLLAPSE_MIN_MASS = 0.005
#: Collapse: the reweighted generator gives a basin less than this share of its mass.
COLLAPSE_MIN_RATIO = 1.0 / 3.0


def basin_index(phi, psi) -> np.ndarray:
    """Index into :data:`BASINS` of every (phi, psi) pair (radians; any shape)."""
    phi, psi = np.asarray(phi, dtype=np.float64), np.asarray(psi, dtype=np.float64)
    alpha_r = (psi > ALPHA_R_PSI[0]) & (psi <= ALPHA_R_PSI[1])
    return np.where(phi > 0, 2, np.where(alpha_r, 0, 1))


def normalised_weights(log_w, n: int) -> np.ndarray:
    """Weights from log-weights, summing to one (uniform when ``log_w`` is None);
    -inf log-weights get zero weight."""
    if log_w is None:
        return np.full(n, 1.0 / n)
    lw = np.asarray(log_w, dtype=np.float64).reshape(-1)
    if lw.shape != (n,):
        raise ValueError(f"log-weights must have one entry per sample ({n}), got {lw.shape}")
    if np.isnan(lw).any() or (lw == np.inf).any() or not np.isfinite(lw).any():
        raise ValueError("log-weights must not be NaN or +inf, and at least one must be finite")
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return w / w.sum()


def weighted_mean(values, log_w=None) -> tuple[float, float]:
    """Self-normalised importance-sampling mean of ``values`` and its delta-method
    standard error :math:`\\sqrt{\\sum_i w_i^2 (f_i - \\bar f)^2}` (normalised w).
    Samples of zero weight (log-weight -inf) may have any value, even a non-finite one."""
    f = np.asarray(values, dtype=np.float64).reshape(-1)
    w = normalised_weights(log_w, f.size)
    ok = w > 0
    f, w = f[ok], w[ok]
    mean = float(np.sum(w * f))
    return mean, float(np.sqrt(np.sum(w**2 * (f - mean) ** 2)))


def population_bounds(population: float, ess: float, level: float = 0.95) -> tuple[float, float]:
    """One-sided ``level`` lower and upper bounds of a population estimated as
    ``population`` from samples of Kish effective size ``ess`` (Clopper-Pearson with
    n = ESS, continuous in the count n * population)."""
    from scipy.stats import beta

    if not (ess > 0 and 0.0 <= population <= 1.0 and 0.0 < level < 1.0):
        raise ValueError(f"need ess > 0, population in [0, 1] and level in (0, 1), got {ess}, {population}, {level}")
    x = population * ess
    lower = 0.0 if x <= 0 else float(beta.ppf(1.0 - level, x, ess - x + 1.0))
    upper = 1.0 if ess - x <= 0 else float(beta.ppf(level, x + 1.0, ess - x))
    return lower, upper


@dataclasses.dataclass
class BasinPopulation:
    """A basin's population with its errors.

    Attributes
    ----------
    population, stderr : float
        Reweighted (self-normalised) estimate and its delta-method error.
    lower95, upper95 : float
        One-sided 95 % bounds from the ESS (never both zero, even for an empty basin).
    n_samples : int
        Samples in the basin (unweighted count).
    """

    population: float
    stderr: float
    lower95: float
    upper95: float
    n_samples: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def basin_populations(phi, psi, log_w=None) -> dict[str, BasinPopulation]:
    """Populations of the :data:`BASINS` of one residue from samples (phi, psi) ``[N]``
    (radians) with log importance weights ``log_w`` (None: unweighted)."""
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    if phi.shape != psi.shape or phi.size == 0:
        raise ValueError(f"phi and psi must be non-empty and of equal length, got {phi.size} and {psi.size}")
    w = normalised_weights(log_w, phi.size)
    ess = float(1.0 / np.sum(w**2))
    idx = basin_index(phi, psi)
    out = {}
    for b, name in enumerate(BASINS):
        inside = idx == b
        p = float(np.clip(np.sum(w[inside]), 0.0, 1.0))
        stderr = float(np.sqrt(np.sum(w**2 * (inside - p) ** 2)))
        lower, upper = population_bounds(p, ess)
        out[name] = BasinPopulation(p, stderr, lower, upper, int(np.count_nonzero(inside & (w > 0))))
    return out


def basin_shares(angles, labels, log_w) -> dict[str, dict[str, list[float]]]:
    """Where a batch of model samples puts each residue's backbone, unweighted and
    reweighted: ``{label: {basin: [share, population]}}``.

    ``share`` is the fraction of the samples in the basin (the model's own mass there);
    ``population`` the self-normalised reweighted estimate of the target's mass there
    (weights ``log_w``), as reliable as the share is far from zero. While a model
    anneals towards the target, a minor basin's share falls towards the target's
    population; a share that falls on towards zero is a basin being lost.

    Parameters
    ----------
    angles : array [N, R, 2]
        (phi, psi) in radians of R residues (``phi_psi(..., per_residue=True)``).
    labels : sequence of str
        R residue labels.
    log_w : array [N]
        log importance weights of the samples for the target.
    """
    a = np.asarray(angles, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] != 2 or a.shape[1] != len(labels) or a.shape[0] == 0:
        raise ValueError(f"angles must have shape [N > 0, {len(labels)} residues, 2], got {a.shape}")
    w = normalised_weights(log_w, a.shape[0])
    out = {}
    for r, label in enumerate(labels):
        idx = basin_index(a[:, r, 0], a[:, r, 1])
        out[label] = {name: [float(np.mean(idx == b)), float(np.sum(w[idx == b]))] for b, name in enumerate(BASINS)}
    return out


def mode_collapse(reference: dict, generator: dict, min_mass: float = COLLAPSE_MIN_MASS,
                  min_ratio: float = COLLAPSE_MIN_RATIO) -> list[dict]:
    """Basins that the generator misses.

    Parameters
    ----------
    reference : dict
        ``{residue: {basin: population}}`` of reference samples.
    generator : dict
        ``{residue: {basin: BasinPopulation}}`` of the reweighted generator.
    min_mass, min_ratio : float
        A reference basin holding at least ``min_mass`` is collapsed when the generator
        gives it less than ``min_ratio`` of that mass, or no sample at all.

    Returns
    -------
    list of dict
        One ``{"residue", "basin", "reference", "generator", "n_samples"}`` per collapsed
        basin; empty when nothing collapsed.
    """
    collapsed = []
    for residue, ref_basins in reference.items():
        if residue not in generator:
            raise ValueError(f"residue {residue!r} of the reference has no generator populations")
        for basin, p_ref in ref_basins.items():
            gen = generator[residue][basin]
            if p_ref >= min_mass and (gen.n_samples == 0 or gen.population < min_ratio * p_ref):
                collapsed.append({"residue": residue, "basin": basin, "reference": float(p_ref),
                                  "generator": gen.population, "n_samples": gen.n_samples})
    return collapsed
