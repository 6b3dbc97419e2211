r"""The interface every annealing path implements.

A path chooses the next density :math:`q_{i+1} \propto q_i^{\alpha}\tilde p^{\beta}`
relative to the current model :math:`q_i` from fresh samples of :math:`q_i`
(``log_q``, ``log_p``), and returns it as a :class:`~openmm_cmt.cmt.dual.DualSolution`.
"""

from __future__ import annotations

import dataclasses

from openmm_cmt.cmt.dual import DualSolution


@dataclasses.dataclass
class AnnealingPath:
    """Base class of the annealing paths; subclasses are dataclasses whose fields are
    their settings (named as the fields of :class:`~openmm_cmt.cmt.CMTConfig`).

    Attributes
    ----------
    reverse_kl
        True for a path that fits the model to the target by
        reparameterised reverse KL instead of weighted forward KL towards
        :math:`q_{i+1}` (the trainer then draws fresh samples per gradient step).
    """

    reverse_kl = False

    @classmethod
    def from_config(cls, config) -> "AnnealingPath":
        """The path with its settings read from ``config`` (a ``CMTConfig`` or any object
        with attributes of the same names); settings it lacks keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)})

    def step(self, log_q, log_p, index: int, init: tuple[float, float] = (1.0, 1.0)) -> DualSolution:
        """The step from :math:`q_i` to :math:`q_{i+1}`.

        Parameters
        ----------
        log_q, log_p
            ``[n]`` log densities of fresh samples of :math:`q_i`: the model's and the
            unnormalised target's (nats).
        index
            i, the annealing step counted from 0.
        init
            warm start (lam, eta) for paths that solve the dual.
        """
        raise NotImplementedError


def check_positive(**values) -> None:
    """Raise ValueError naming each setting that is not a positive number."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be positive (nats), got {value!r}")
