"""Choosing an OpenMM platform: the one meaning of ``platform="auto"`` in this package.

``"auto"`` is the first platform of :data:`AUTO_PLATFORMS` (CUDA, then CPU, then
Reference) that loaded and can create a Context for the System at hand. It is a fixed
order, not a measurement: the same machine and System always get the same platform.
Any other name is an OpenMM platform name, matched without regard to case.
"""

from __future__ import annotations

import os

import openmm

#: Platforms tried, in order, for ``"auto"``.
AUTO_PLATFORMS = ("CUDA", "CPU", "Reference")

#: Platforms whose Contexts run on one device each; the others use CPU cores.
GPU_PLATFORMS = ("CUDA", "OpenCL", "HIP", "Metal")

#: Properties a Context gets unless the caller overrides them: mixed precision keeps
#: GPU energies and dynamics accurate.
DEFAULT_PROPERTIES = {"CUDA": {"Precision": "mixed"}, "OpenCL": {"Precision": "mixed"}}


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that loaded (a listed GPU platform may still lack a device)."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def platform_name(name: str) -> str:
    """The loaded platform called ``name`` (any case), or a ValueError listing them."""
    names = available_platforms()
    for candidate in names:
        if candidate.lower() == str(name).lower():
            return candidate
    raise ValueError(f"platform must be 'auto' or one of {names}, got {name!r}")


def platform_properties(name: str, properties: dict | None = None) -> dict:
    """:data:`DEFAULT_PROPERTIES` of platform ``name`` updated with ``properties``."""
    props = dict(DEFAULT_PROPERTIES.get(name, {}))
    props.update(properties or {})
    return props


def create_context(system: openmm.System, integrator, platform: str = "auto", properties: dict | None = None):
    """``(context, platform_name)``: a Context for ``system`` on ``platform`` (module
    docstring; ``"auto"`` tries :data:`AUTO_PLATFORMS` in order), with
    :func:`platform_properties`. RuntimeError when no candidate creates one."""
    names = [platform_name(platform)] if platform != "auto" else [p for p in AUTO_PLATFORMS if p in available_platforms()]
    errors = []
    for name in names:
        try:
            plat = openmm.Platform.getPlatformByName(name)
            return openmm.Context(system, integrator, plat, platform_properties(name, properties)), name
        except Exception as err:  # a platform whose driver or device is missing
            errors.append(f"{name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    raise RuntimeError("no OpenMM platform could create a Context: " + "; ".join(errors))


def resolve_platform(name: str, system: openmm.System, properties: dict | None = None) -> str:
    """The platform name ``name`` stands for with ``system`` (module docstring)."""
    if name != "auto":
        return platform_name(name)
    context, chosen = create_context(system, openmm.VerletIntegrator(0.001), name, properties)
    del context
    return chosen
