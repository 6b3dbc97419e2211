r"""Temperature swaps and their bookkeeping for many independent replica ladders.

Replica ``r`` of ladder ``l`` sits at temperature index ``state[l, r]``; the inverse
permutation ``replica_at[l, k]`` names the replica at temperature ``k``. Exchanging the
configurations of temperatures ``k`` and ``k+1`` (inverse temperatures
:math:`\beta_k, \beta_{k+1}`, potential energies :math:`E_k, E_{k+1}` of the replicas
there) keeps the product of Boltzmann distributions invariant when accepted with

.. math::
    \min\{1, \exp[(\beta_k - \beta_{k+1})(E_k - E_{k+1})]\}

(Swendsen and Wang, PRL 57, 2607 (1986); Sugita and Okamoto, CPL 314, 141 (1999)).
Even pairs (0-1, 2-3, ...) and odd pairs (1-2, 3-4, ...) alternate, so the swaps of
one round are independent of each other.
"""

from __future__ import annotations

import numpy as np

from openmm_cmt import units


def geometric_temperatures(t_min: float, t_max: float, n: int) -> np.ndarray:
    """``n`` temperatures in K from ``t_min`` to ``t_max`` with a constant ratio."""
    if n < 1 or not 0 < t_min <= t_max:
        raise ValueError(f"need n >= 1 and 0 < t_min <= t_max, got n={n}, t_min={t_min}, t_max={t_max}")
    if n == 1:
        return np.array([float(t_min)])
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


def swap_log_acceptance(beta_low, beta_high, energy_low, energy_high):
    r"""Log of the Metropolis ratio :math:`(\beta_k - \beta_{k+1})(E_k - E_{k+1})` for
    exchanging the configurations at two temperatures (energies in kJ/mol, beta in
    mol/kJ). The acceptance probability is ``min(1, exp(.))``."""
    return (np.asarray(beta_low) - np.asarray(beta_high)) * (np.asarray(energy_low) - np.asarray(energy_high))


def attempt_swaps(replica_at: np.ndarray, energies: np.ndarray, temperatures, parity: int, rng: np.random.Generator):
    """One round of neighbour swaps in every ladder.

    Parameters
    ----------
    replica_at
        ``[n_ladders, n_temps]`` int, the replica at each temperature;
        updated in place.
    energies
        ``[n_ladders, n_temps]`` kJ/mol, indexed by replica.
    temperatures
        ``[n_temps]`` K, increasing.
    parity
        0 for pairs (0,1), (2,3), ...; 1 for (1,2), (3,4), ...
    rng
        numpy Generator for the Metropolis draws.

    Returns
    -------
    (pairs, accepted) : tuple
        The lower temperature index of each pair attempted ``[n_pairs]`` and a bool
        array ``[n_ladders, n_pairs]``.
    """
    energies = np.asarray(energies, dtype=np.float64)
    if energies.shape != replica_at.shape:
        raise ValueError(f"energies must have shape {replica_at.shape} (ladders, replicas), got {energies.shape}")
    if not np.all(np.isfinite(energies)):
        raise ValueError("non-finite replica energies: the dynamics blew up (try a smaller timestep)")
    beta = 1.0 / units.kT(np.asarray(temperatures, dtype=np.float64))
    pairs = np.arange(parity, replica_at.shape[1] - 1, 2)
    low, high = replica_at[:, pairs], replica_at[:, pairs + 1]
    log_acc = swap_log_acceptance(
        beta[pairs], beta[pairs + 1], np.take_along_axis(energies, low, 1), np.take_along_axis(energies, high, 1)
    )
    # log(u) < log_acc accepts with probability min(1, exp(log_acc)); 1 - u avoids log(0).
    accepted = np.log1p(-rng.random(log_acc.shape)) < log_acc
    replica_at[:, pairs] = np.where(accepted, high, low)
    replica_at[:, pairs + 1] = np.where(accepted, low, high)
    return pairs, accepted


def states_of_replicas(replica_at: np.ndarray) -> np.ndarray:
    """The inverse permutation: temperature index of each replica, ``[n_ladders, n_temps]``."""
    state = np.empty_like(replica_at)
    np.put_along_axis(state, replica_at, np.arange(replica_at.shape[1])[None, :].repeat(len(replica_at), 0), 1)
    return state


class RoundTripCounter:
    """Counts round trips bottom -> top -> bottom of every replica.

    A replica's trip starts when it visits the lowest temperature, is half done when
    it then reaches the highest, and counts when it returns to the lowest.
    """

    def __init__(self, n_ladders: int, n_temps: int):
        self.n_temps = n_temps
        # 0: no visit to the bottom yet, 1: at or from the bottom, 2: reached the top since
        self.phase = np.zeros((n_ladders, n_temps), dtype=np.int8)
        self.round_trips = np.zeros((n_ladders, n_temps), dtype=np.int64)

    def update(self, state: np.ndarray) -> None:
        """Record the temperature index of every replica, ``state [n_ladders, n_temps]``."""
        at_bottom = state == 0
        at_top = state == self.n_temps - 1
        self.round_trips += at_bottom & (self.phase == 2)
        self.phase[at_top & (self.phase == 1)] = 2
        self.phase[at_bottom] = 1
