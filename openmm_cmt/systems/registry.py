"""Named systems: every CLI SYSTEM argument resolves through ``get``.

Besides the built-in systems (``register``), installed packages add systems through the
entry-point group ``openmm_cmt.systems``: each entry point names a system and points at a
factory returning a ``MolecularSystem`` (called with ``temperature=`` when the command
line gives one), as openmm-ml finds its potentials. In a package's ``pyproject.toml``::

    [project.entry-points."openmm_cmt.systems"]
    chignolin = "my_package.systems:chignolin"

The factory's module is imported only when its system is asked for. A registered name
takes precedence over an entry point of the same name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable

from openmm_cmt.systems.molecular_system import MolecularSystem

#: The entry-point group of systems from other packages.
ENTRY_POINT_GROUP = "openmm_cmt.systems"

_REGISTRY: dict[str, Callable[..., MolecularSystem]] = {}


def register(name: str, factory: Callable[..., MolecularSystem]) -> None:
    """Make ``factory()`` available as ``get(name)``."""
    _REGISTRY[name] = factory


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Registered system names and those of the ``openmm_cmt.systems`` entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get(name: str, **kwargs) -> MolecularSystem:
    """The MolecularSystem registered as ``name``, or else provided by the entry point
    ``name`` of the group ``openmm_cmt.systems``.

    Raises KeyError listing the known names when ``name`` is neither, and ValueError when
    an entry point does not load or its factory returns something else than a
    MolecularSystem.
    """
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    ep = _entry_points().get(name)
    if ep is None:
        raise KeyError(f"unknown system {name!r}; known systems: {', '.join(names())}")
    where = f"system {name!r} of entry point {ep.value!r} (group {ENTRY_POINT_GROUP})"
    try:
        factory = ep.load()
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{where} does not load: {err}") from err
    if not callable(factory):
        raise ValueError(f"{where} is not a callable returning a MolecularSystem, got {factory!r}")
    molsys = factory(**kwargs)
    if not isinstance(molsys, MolecularSystem):
        raise ValueError(f"{where} returned {type(molsys).__name__}, not a MolecularSystem")
    return molsys


def resolve(spec: str, forcefield_files=None, temperature: float | None = None, implicit_solvent=None,
            trust_run: bool = False) -> MolecularSystem:
    """A MolecularSystem from a command-line SYSTEM argument.

    ``spec`` is a registered name, a path ending in ``.pdb`` (then
    ``forcefield_files`` and ``implicit_solvent`` are used), or a folder holding
    ``system.xml`` (a run folder, or one written by ``openmm_cmt.systems.files.save_system``).
    A name or PDB path followed by ``:<potential>`` is the same molecule with a pure
    openmm-ml potential (e.g. ``alanine-dipeptide:ani2x``; ``openmm_cmt.systems.ml``).
    A folder whose System carries serialised Python is refused unless ``trust_run``
    (``openmm_cmt.systems.files.load_system``).
    """
    import os

    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "system.xml")):
        from openmm_cmt.systems.files import load_system

        molsys = load_system(spec, trust_run=trust_run)
        if temperature is not None:
            molsys.temperature = float(temperature)
        return molsys
    if ":" in spec:
        from openmm_cmt.systems import ml

        base, potential = ml.split_spec(spec)
        return ml.from_spec(resolve(base, forcefield_files, temperature, implicit_solvent), potential)
    if spec.lower().endswith(".pdb"):
        kwargs = {}
        if forcefield_files:
            kwargs["forcefield_files"] = tuple(forcefield_files)
        if temperature is not None:
            kwargs["temperature"] = temperature
        return MolecularSystem.from_pdb(spec, implicit_solvent=implicit_solvent, **kwargs)
    kwargs = {} if temperature is None else {"temperature": temperature}
    return get(spec, **kwargs)


def add_system_arguments(parser) -> None:
    """The SYSTEM argument and its options, shared by every subcommand."""
    parser.add_argument("system", metavar="SYSTEM", help=f"a registered system ({', '.join(names())}) or a PDB file, "
                        "optionally followed by :POTENTIAL for an openmm-ml target (e.g. alanine-dipeptide:ani2x)")
    parser.add_argument("--forcefield", nargs="+", default=None, help="force-field XMLs for a PDB SYSTEM")
    parser.add_argument("--implicit-solvent", default=None, help="obc1, obc2, gbn, gbn2, hct or an XML, for a PDB SYSTEM")
    parser.add_argument("--temperature", type=float, default=None, help="K (default: the system's own)")


def system_from_args(args) -> MolecularSystem:
    return resolve(args.system, args.forcefield, args.temperature, args.implicit_solvent,
                   trust_run=getattr(args, "trust_run", False))
