r"""Targets defined by machine-learned potentials through openmm-ml.

``build_ml_system`` turns a Topology into an OpenMM System whose energy comes from
``openmmml.MLPotential(potential)``:

* pure ML: ``createSystem(topology)``, :math:`E(x) = E_{ML}(x)`;
* ML/MM (``ml_atoms`` given): ``createMixedSystem(topology, classical_system, ml_atoms)``
  with openmm-ml's mechanical embedding,

  .. math:: E(x) = E_{MM}(x) - E_{MM}^{\mathrm{ML\ region}}(x_{ML}) + E_{ML}(x_{ML}),

  where :math:`E_{MM}^{\mathrm{ML\ region}}` collects the classical bonded terms among ML
  atoms only and the classical nonbonded pairs inside the region (NonbondedForce and
  CustomNonbondedForce; other forces, e.g. a CustomGBForce, are kept whole).

openmm-ml wraps every potential in an ``openmm.PythonForce``. Its compute function is
pickled into the System's XML, so ``OpenMMEnergy`` worker processes rebuild the force
from the XML when the function pickles (ANI, ASE with a picklable calculator);
``from_ml_potential`` also stores a picklable recipe (``MolecularSystem.system_factory``)
that rebuilds the System from scratch, which engines may pass as ``system_factory``.

Model weights. Most openmm-ml potentials download weights at first use. Where the file
is known (:func:`weights_location`) it is checked *before* openmm-ml is called; when it is
missing and downloading is off (``download=False``, or ``OPENMM_CMT_OFFLINE``,
``HF_HUB_OFFLINE`` set) or the host does not answer within ``PROBE_SECONDS``, a
:class:`ModelWeightsUnavailableError` names the file and where to put it. Any download
runs with a socket timeout of ``DOWNLOAD_TIMEOUT`` seconds, and a network failure is
reported the same way: nothing waits on a dead network.

ANI forces. openmm-ml 1.8's ANI computation returns forces per Angstrom where OpenMM
expects per nm (10 times too small; energies are right). ``build_ml_system`` substitutes
:func:`_compute_ani`, the same model and inputs with forces in kJ/mol/nm (checked against
finite differences in the tests).

TorchEnergy evaluates the ANI PythonForces of these Systems batched
(``openmm_cmt.energy.torch_energy.ml``), classical forces of an ML/MM System alongside.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import pickle
import socket
import threading
import urllib.error

import numpy as np
import torch
import openmm
from openmm import app

from openmm_cmt.units import HARTREE_KJ_PER_MOL

#: Seconds a reachability probe of a weights host may take before it counts as offline.
PROBE_SECONDS = 3.0
#: Socket timeout (s) while openmm-ml or a model package downloads weights.
DOWNLOAD_TIMEOUT = 60.0
#: Environment variables that, when set to a true value, forbid downloads.
OFFLINE_VARIABLES = ("OPENMM_CMT_OFFLINE", "HF_HUB_OFFLINE")

#: Potentials that read a local model file, and the keyword that names it.
_LOCAL_FILE_KEYWORD = {
    "mace": "modelPath",
    "aimnet": "modelPath",
    "fennix": "modelPath",
    "torchmdnet": "modelPath",
    "nequip": "modelPath",
    "deepmd": "model",
}


class ModelWeightsUnavailableError(FileNotFoundError):
    """The weights of an ML potential are not on this machine and cannot be downloaded.

    Attributes
    ----------
    potential
        the openmm-ml potential name.
    path
        the file that is looked for (None when the model package decides).
    hint
        how to make the file available.
    """

    def __init__(self, potential: str, path: str | None, hint: str, reason: str = ""):
        self.potential, self.path, self.hint = potential, path, hint
        where = f"expected file: {path}" if path else "the model package caches the file itself"
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"weights of ML potential {potential!r} are not available offline{because}; {where}. {hint}"
        )


# -- where weights live ---------------------------------------------------------------------


def _torchani_state_dicts_dir() -> str:
    # torchani >= 2.3 keeps built-in weights in $TORCHANI_DATA_DIR/StateDicts
    # (default ~/.local/share/Torchani), see torchani.paths.
    root = os.environ.get("TORCHANI_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".local", "share", "Torchani")
    return os.path.join(root, "StateDicts")


def weights_location(potential: str, **kwargs) -> tuple[str | None, str | None, str]:
    """Where ``potential``'s weights are looked for: ``(path, host, hint)``.

    ``path`` is the local file (None when only the model package knows it, or when the
    potential needs no weights, e.g. ``ase``), ``host`` the server a download would
    contact (None: no probe), ``hint`` how to put the file in place by hand.
    """
    name = potential.lower()
    if name in ("ani2x", "ani1ccx"):
        path = os.path.join(_torchani_state_dicts_dir(), f"{name}_state_dict.pt")
        hint = (
            f"Copy {name}_state_dict.pt (torchani's built-in weights, from huggingface.co/roitberg-group/{name} "
            "or github.com/roitberg-group/torchani_model_zoo releases) into that directory, or point "
            "TORCHANI_DATA_DIR at a directory whose StateDicts/ holds it."
        )
        return path, "huggingface.co", hint
    if name.startswith("fennix-"):
        path = os.path.join(os.path.expanduser("~"), ".cache", "openmm-ml", f"{name}.fnx")
        return path, "github.com", "Copy the .fnx file there (openmm-ml's cache) or use MLPotential('fennix', modelPath=...)."
    if name.startswith("aceff-"):
        return None, "huggingface.co", (
            "Download it with huggingface_hub on a machine with network and copy the Hugging Face cache "
            "(~/.cache/huggingface/hub), or use MLPotential('torchmdnet', modelPath=<checkpoint>)."
        )
    if name in _LOCAL_FILE_KEYWORD:
        keyword = _LOCAL_FILE_KEYWORD[name]
        path = kwargs.get(keyword)
        return (None if path is None else os.fspath(path)), None, f"Pass an existing model file as {keyword}=."
    if name == "ase":
        return None, None, "The ASE calculator passed as calculator= (or aseAtoms=) supplies the energy."
    if name.startswith("mace-"):
        return None, "github.com", "mace caches foundation models under ~/.cache/mace; or use MLPotential('mace', modelPath=...)."
    if name.startswith("aimnet2"):
        return None, "github.com", "aimnet caches its models itself; or use MLPotential('aimnet', modelPath=...)."
    if name.startswith("orb-"):
        return None, None, "orb-models caches its weights itself; download them once on a machine with network."
    return None, None, "See the openmm-ml documentation of this potential."


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() not in ("", "0", "false", "no") for v in OFFLINE_VARIABLES)


def _reachable(host: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``seconds`` (DNS included:
    the probe runs in a daemon thread, since name resolution ignores socket timeouts)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=seconds).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result and result[0])


_NETWORK_ERROR_NAMES = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError", "ConnectError",
                        "ConnectTimeout", "ReadTimeout", "HTTPError")


def _network_error(err: BaseException) -> BaseException | None:
    """The network failure in ``err``'s cause chain, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (urllib.error.URLError, socket.timeout, socket.gaierror, ConnectionError, TimeoutError)):
            return err
        if type(err).__name__ in _NETWORK_ERROR_NAMES:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def _download_guard(offline: bool):
    """A socket timeout for every download, and Hugging Face's offline switch when offline."""
    previous_timeout = socket.getdefaulttimeout()
    previous_hf = os.environ.get("HF_HUB_OFFLINE")
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous_timeout)
        if offline:
            if previous_hf is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous_hf


def check_weights(potential: str, download="auto", **kwargs) -> None:
    """Raise ``ModelWeightsUnavailableError`` at once when ``potential``'s weights file is
    known, missing, and cannot be fetched (``download=False``, an offline variable set,
    or, for ``"auto"``, its host unreachable within ``PROBE_SECONDS``)."""
    if download not in ("auto", True, False):
        raise ValueError(f"download must be 'auto', True or False, got {download!r}")
    path, host, hint = weights_location(potential, **kwargs)
    name = potential.lower()
    if name in _LOCAL_FILE_KEYWORD:
        if path is not None and not os.path.isfile(path):
            raise ModelWeightsUnavailableError(potential, path, hint, "the model file does not exist")
        return
    if path is None or os.path.isfile(path):
        return
    if download is False:
        raise ModelWeightsUnavailableError(potential, path, hint, "download=False")
    if _offline():
        raise ModelWeightsUnavailableError(potential, path, hint, f"downloads disabled by {'/'.join(OFFLINE_VARIABLES)}")
    if download == "auto" and host is not None and not _reachable(host):
        raise ModelWeightsUnavailableError(potential, path, hint, f"{host} is not reachable")


# -- building Systems -----------------------------------------------------------------------


def _split_kwargs(potential: str, kwargs: dict) -> tuple[dict, dict]:
    """(constructor kwargs, createSystem kwargs): a keyword named in the potential
    factory's ``createImpl`` signature goes to ``MLPotential(...)`` only; with ``**args``
    there, everything else goes to both (openmm-ml ignores what it does not use)."""
    from openmmml import MLPotential

    factory = MLPotential._implFactories.get(potential)
    if factory is None:
        known = ", ".join(sorted(MLPotential._implFactories))
        raise ValueError(f"unknown ML potential {potential!r}; openmm-ml offers: {known}")
    params = inspect.signature(factory.createImpl).parameters
    named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"name"}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    ctor = {k: v for k, v in kwargs.items() if k in named or takes_any}
    rest = {k: v for k, v in kwargs.items() if k not in named}
    return ctor, rest


def _check_ml_atoms(topology: app.Topology, ml_atoms, classical_system) -> list[int]:
    n = topology.getNumAtoms()
    if classical_system is None:
        raise ValueError("ml_atoms needs classical_system=, the openmm.System of the whole Topology (ML/MM)")
    if not isinstance(classical_system, openmm.System):
        raise ValueError(f"classical_system must be an openmm.System, got {type(classical_system).__name__}")
    if classical_system.getNumParticles() != n:
        raise ValueError(f"classical_system has {classical_system.getNumParticles()} particles, the Topology {n} atoms")
    atoms = [int(i) for i in ml_atoms]
    if not atoms:
        raise ValueError("ml_atoms is empty; pass None for a pure ML System")
    if len(set(atoms)) != len(atoms) or min(atoms) < 0 or max(atoms) >= n:
        raise ValueError(f"ml_atoms must be distinct atom indices in [0, {n}), got {atoms}")
    inside = set(atoms)
    cut = [(b.atom1.index, b.atom2.index) for b in topology.bonds() if (b.atom1.index in inside) != (b.atom2.index in inside)]
    if cut:
        # openmm-ml would cap each cut bond with a virtual-site hydrogen, a particle the
        # generator cannot place; whole molecules keep the System's atoms those of the Topology.
        raise ValueError(
            f"ml_atoms must be whole molecules: bonds {cut[:5]} cross the ML/MM boundary "
            "(openmm-ml would add link-atom virtual sites, which a generator over atom positions cannot sample)"
        )
    return atoms


def _compute_ani(state, model, species, pbc):
    """openmm-ml's ANI PythonForce computation with forces in OpenMM's units.

    openmm-ml 1.8 returns -dE/dr with r in Angstrom (kJ/mol/A) where OpenMM expects
    kJ/mol/nm, i.e. forces 10 times too small; energies are right. Same model, same
    inputs (float32 Angstrom, periodic wrapping as openmm-ml does it), energy as a float.
    """
    from openmm import unit

    angstrom = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    positions = torch.tensor(angstrom, dtype=torch.float32, device=species.device)
    cell = None
    if pbc is not None:
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        cell = torch.tensor(box, dtype=torch.float32, device=species.device)
        for axis in (2, 1, 0):  # wrap into the triclinic cell, last vector first
            positions = positions - torch.outer(torch.floor(positions[:, axis] / cell[axis, axis]), cell[axis])
    positions = positions.unsqueeze(0).requires_grad_(True)
    with torch.enable_grad():
        energy = model((species, positions), cell=cell, pbc=pbc).energies.sum() * HARTREE_KJ_PER_MOL
        (grad,) = torch.autograd.grad(energy, positions)
    return float(energy.detach()), (-10.0 * grad[0]).detach().cpu().numpy().astype(np.float64)  # per A -> per nm


def _corrected(compute):
    func = getattr(compute, "func", None)
    if getattr(func, "__module__", "") == "openmmml.models.anipotential" and getattr(func, "__name__", "") == "_computeANI":
        return functools.partial(_compute_ani, **compute.keywords)
    return compute


@contextlib.contextmanager
def _python_force_hook():
    """While openmm-ml builds, route every ``openmm.PythonForce(compute)`` through
    ``_corrected``."""
    real = openmm.PythonForce

    def make(compute, *args, **kwargs):
        return real(_corrected(compute), *args, **kwargs)

    openmm.PythonForce = make
    try:
        yield
    finally:
        openmm.PythonForce = real


def build_ml_system(topology: app.Topology, potential: str, ml_atoms=None, classical_system=None,
                    download="auto", **kwargs) -> openmm.System:
    """The OpenMM System of ``topology`` with energies from openmm-ml's ``potential``.

    ANI forces use :func:`_compute_ani` (openmm-ml's computation with forces converted
    to kJ/mol/nm; openmm-ml 1.8 returns them per Angstrom).

    Parameters
    ----------
    topology
        every atom needs an element.
    potential
        an openmm-ml potential name (``ani2x``, ``mace-off23-small``, ``ase``, ...).
    ml_atoms
        atom indices of the ML region (whole molecules) for an ML/MM System, or None.
    classical_system
        the classical System of the whole Topology (with ``ml_atoms``).
    download
        ``"auto"`` (download missing weights when the host answers), True, or False
        (never download; missing weights raise at once).
    **kwargs
        passed to ``MLPotential(potential, ...)`` and to ``createSystem`` /
        ``createMixedSystem`` (e.g. ``calculator=`` for ``ase``, ``modelIndex=`` for
        ANI, ``modelPath=`` for local models).

    Raises
    ------
    ModelWeightsUnavailableError
        (a FileNotFoundError) when weights are missing and cannot be fetched.
    ImportError
        naming openmmml when it is absent.
    """
    if not isinstance(topology, app.Topology):
        raise ValueError(f"topology must be an openmm.app.Topology, got {type(topology).__name__}")
    missing = [a.index for a in topology.atoms() if a.element is None]
    if missing:
        raise ValueError(f"ML potentials need an element for every atom; atoms {missing[:10]} have none")
    try:
        from openmmml import MLPotential
    except ImportError as err:
        raise ImportError(f"ML potentials need openmm-ml: pip install openmmml ({err})") from err
    atoms = None if ml_atoms is None else _check_ml_atoms(topology, ml_atoms, classical_system)
    if ml_atoms is None and classical_system is not None:
        raise ValueError("classical_system is only used with ml_atoms (an ML/MM System)")
    ctor_kwargs, system_kwargs = _split_kwargs(potential, kwargs)
    check_weights(potential, download, **kwargs)
    offline = download is False or _offline()
    _, _, hint = weights_location(potential, **kwargs)
    try:
        with _download_guard(offline), _python_force_hook():
            ml = MLPotential(potential, **ctor_kwargs)
            if atoms is None:
                return ml.createSystem(topology, **system_kwargs)
            return ml.createMixedSystem(topology, classical_system, atoms, **system_kwargs)
    except ModelWeightsUnavailableError:
        raise
    except Exception as err:
        cause = _network_error(err)
        if cause is None:
            raise
        path, _, _ = weights_location(potential, **kwargs)
        raise ModelWeightsUnavailableError(potential, path, hint, f"download failed: {cause}") from err


def from_ml_potential(cls, topology, positions, potential: str, temperature: float = 300.0, ml_atoms=None,
                      classical_system=None, name: str | None = None, download="auto", **kwargs):
    """A ``cls`` (MolecularSystem) whose System comes from :func:`build_ml_system`.

    ``system_factory`` is set to a picklable recipe rebuilding the same System when the
    arguments pickle (energy engines may rebuild it in worker processes), else None.
    """
    recipe = functools.partial(build_ml_system, topology, potential, ml_atoms, classical_system, download, **kwargs)
    try:
        # A snapshot taken before first use: calculators may grow unpicklable state later.
        recipe = functools.partial(_rebuild, pickle.dumps(recipe))
    except Exception:
        recipe = None
    system = build_ml_system(topology, potential, ml_atoms, classical_system, download, **kwargs)
    molsys = cls(
        name=name or f"ml-{potential}",
        topology=topology,
        system=system,
        positions=positions,
        temperature=temperature,
    )
    molsys.system_factory = recipe
    return molsys


def _rebuild(recipe: bytes) -> openmm.System:
    return pickle.loads(recipe)()


def from_spec(base, potential: str, **kwargs):
    """The ML target ``"<base name>:<potential>"``: ``base`` (a MolecularSystem)'s topology,
    positions and temperature with a pure-ML System of ``potential``."""
    return from_ml_potential(type(base), base.topology, base.positions, potential, base.temperature,
                             name=f"{base.name}:{potential}", **kwargs)


def split_spec(spec: str) -> tuple[str, str] | None:
    """``"alanine-dipeptide:ani2x"`` -> ``("alanine-dipeptide", "ani2x")``; None without a potential."""
    base, sep, potential = spec.rpartition(":")
    if not sep:
        return None
    if not base or not potential:
        raise ValueError(f"an ML SYSTEM spec is '<system>:<potential>' (e.g. alanine-dipeptide:ani2x), got {spec!r}")
    return base, potential
