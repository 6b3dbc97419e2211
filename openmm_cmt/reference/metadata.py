"""What a reference file was sampled from: the System's fingerprint and the temperature.

Forward metrics compare a generator with reference frames and reuse their stored
energies, so a reference of another System (another force field, solvent model or
protonation) or another temperature would silently measure the wrong ensemble.
"""

from __future__ import annotations

import hashlib
import re

import openmm

#: Relative tolerance on the temperature (K) of a reference against a run.
TEMPERATURE_RTOL = 1e-9

_VERSION_ATTRIBUTE = re.compile(r' openmmVersion="[^"]*"')


def system_fingerprint(system: openmm.System) -> str:
    """SHA-256 of the System's XML without its ``openmmVersion`` attribute, so that the
    same System built under another OpenMM release keeps its fingerprint."""
    xml = _VERSION_ATTRIBUTE.sub("", openmm.XmlSerializer.serialize(system), count=1)
    return hashlib.sha256(xml.encode()).hexdigest()


def reference_metadata(system: openmm.System, temperature: float) -> dict:
    """The settings entries that tie a reference to its System and temperature (K)."""
    return {"system_fingerprint": system_fingerprint(system), "temperature_K": float(temperature)}


def check_reference(settings: dict, molsys, path: str = "the reference") -> None:
    """ValueError unless the reference ``settings`` were sampled from ``molsys``'s System
    at its temperature."""
    fingerprint = settings.get("system_fingerprint")
    if fingerprint is None:
        raise ValueError(
            f"{path} does not record the System it was sampled from (no system_fingerprint; written by an "
            f"older openmm-cmt); make a new one with: openmm-cmt reference {molsys.name} --out FILE.npz"
        )
    if fingerprint != system_fingerprint(molsys.system):
        raise ValueError(
            f"{path} was sampled from another System ({settings.get('system', '?')!r}, fingerprint "
            f"{fingerprint[:12]}...) than this run's {molsys.name!r} (fingerprint "
            f"{system_fingerprint(molsys.system)[:12]}...): force field, solvent or molecule differ"
        )
    temperatures = settings.get("temperatures") or [None]
    temperature = settings.get("temperature_K", temperatures[0])
    if temperature is None or abs(float(temperature) - molsys.temperature) > TEMPERATURE_RTOL * molsys.temperature:
        raise ValueError(f"{path} holds frames at {temperature} K, but the run targets {molsys.temperature} K")
