"""Reference samples shipped with the package.

``alanine-dipeptide``: 24,300 frames at 300 K from ``openmm-cmt reference`` on one H200
(300 ladders x 16 temperatures, 300-1200 K, 20 ps equilibration + 202.5 ps, seed 11;
BENCHMARKS.md). Short of full convergence (3.7 % of replicas made a round trip): the
phi > 0 fraction 0.31 % +- 0.05 % carries the spread between ladders as its error.
Its System fingerprint and temperature (300 K) were added to the file's settings
afterwards, frames unchanged: the registered System's float64 energies of all frames
match the stored ones to 1e-12 kJ/mol.

``alanine-tetrapeptide``: 3,840 frames at 300 K from ``openmm-cmt reference
alanine-tetrapeptide --engine torch --n-ladders 4 --n-temps 8 --time-ps 480
--equilibration-ps 20 --swap-interval-ps 1 --save-interval-ps 0.5 --seed 0`` on one core
of a 2-core CPU (86 minutes; BENCHMARKS.md). A rough reference: 13 round trips in all,
swap acceptance 0.24-0.31. Per residue the alpha_R and beta/PPII populations carry
errors of 0.03-0.05 and alpha_L/C7ax (1.7-3.5 %) about half its value, all from the
spread between the four ladders (``diagnostics["residues"]``, added from the stored
angles after the run).

``alanine-hexapeptide``: 2,560 frames at 300 K from ``openmm-cmt reference
alanine-hexapeptide --engine torch --n-ladders 4 --n-temps 8 --time-ps 320
--equilibration-ps 20 --swap-interval-ps 1 --save-interval-ps 0.5 --seed 0`` on one core
of a 2-core CPU (109 minutes; BENCHMARKS.md). Poorly mixed: 2 round trips in all, swap
acceptance 0.16-0.22. The major basins of each residue carry errors of 0.04-0.15 and the
alpha_L/C7ax basins (0.2-2 %) about their own size, all from the spread between the
four ladders (``diagnostics["residues"]``). Good enough to catch a generator that misses
a major basin, not to grade populations finer than those errors.
"""

from __future__ import annotations

import os

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_FILES = {
    "alanine-dipeptide": "alanine-dipeptide-reference.npz",
    "alanine-tetrapeptide": "alanine-tetrapeptide-reference.npz",
    "alanine-hexapeptide": "alanine-hexapeptide-reference.npz",
}


def bundled_reference(system_name: str) -> str | None:
    """Path of the shipped reference ``.npz`` for a registered system, or None."""
    name = _FILES.get(system_name)
    path = None if name is None else os.path.join(_DATA, name)
    return path if path is not None and os.path.isfile(path) else None
