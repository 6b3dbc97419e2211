"""Evaluation of a trained generator: metrics.json, history.json, plots and report.html.

Every importance-weighted estimate comes with its standard error (the delta-method
error of a self-normalised estimator); every histogram distance with its bin count and
sample sizes, since its noise floor grows with bins / ESS (NOTES section 2).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from openmm_cmt import metrics, report
from openmm_cmt.checkpoint import atomic_write_json


def weighted_mean(values: np.ndarray, log_w: np.ndarray) -> tuple[float, float]:
    """Self-normalised importance-sampling mean and its standard error
    sqrt(sum w_i^2 (f_i - mean)^2) with normalised weights w."""
    ok = np.isfinite(log_w)
    w = np.exp(log_w[ok] - np.max(log_w[ok]))
    w /= w.sum()
    f = values[ok]
    mean = float(np.sum(w * f))
    return mean, float(np.sqrt(np.sum(w**2 * (f - mean) ** 2)))


def block_mean(values: np.ndarray, n_blocks: int = 20) -> tuple[float, float]:
    """Mean of a correlated series and its standard error from ``n_blocks`` blocks."""
    values = np.asarray(values, dtype=np.float64)
    n_blocks = max(2, min(n_blocks, len(values)))
    blocks = np.array([b.mean() for b in np.array_split(values, n_blocks)])
    return float(values.mean()), float(blocks.std(ddof=1) / np.sqrt(n_blocks))


def resolve_reference(reference: str | None, system_name: str) -> str | None:
    """``"auto"``: the reference shipped for ``system_name`` (or None); ``"none"``/None:
    no reference; anything else: a path that must exist."""
    if reference is None or reference == "none":
        return None
    if reference == "auto":
        from openmm_cmt.reference.bundled import bundled_reference

        return bundled_reference(system_name)
    if not os.path.isfile(reference):
        raise FileNotFoundError(f"reference file not found: {reference}")
    return reference


def _phi_psi_or_none(x, topology):
    try:
        angles = metrics.phi_psi(x, topology)
    except ValueError:
        return None
    return angles if angles.ndim == 2 else None


def evaluate(sampler, out_dir, n_samples: int = 100_000, reference: str | None = "auto", bins: int = 100, plots: bool = True) -> dict:
    """Metrics of ``sampler``'s generator, written to ``out_dir``; returns them.

    Args:
        n_samples: generator samples (each costs one exact float64 target evaluation,
            counted separately from training in ``evaluation_target_evaluations``).
        reference: an ``.npz`` from ``openmm-cmt reference`` for forward metrics
            (forward ESS, EUBO, NLL, Ramachandran TV/KL, phi > 0 and mean energy);
            ``"auto"`` takes the reference shipped for the system, if any.
    """
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    reference = resolve_reference(reference, sampler.molsys.name)
    molsys = sampler.molsys
    kT = molsys.kT
    samples = sampler.sample(n_samples)
    log_w = samples.log_weights
    finite = np.isfinite(log_w)
    generator_ess = metrics.reverse_ess(log_w[finite])  # Kish ESS fraction of the finite weights
    m: dict = {
        "system": molsys.name,
        "temperature_K": molsys.temperature,
        "n_samples": int(n_samples),
        "n_nonfinite_energy": int((~finite).sum()),
        "reverse_ess": generator_ess * finite.mean(),
        "reverse_ess_clipped": metrics.reverse_ess(log_w[finite], clip_fraction=1e-4) * finite.mean(),
        "log_z_estimate": metrics.log_z_estimate(log_w[finite]) + float(np.log(finite.mean())),
        "target_evaluations": int(sampler.n_evaluations),
        "wall_s": float(sampler.trainer.wall_s) if sampler.trainer is not None else 0.0,
        "annealing_steps": len(sampler.history),
    }
    m["mean_energy"], m["mean_energy_stderr"] = weighted_mean(samples.energies, log_w)
    m["mean_energy_unweighted"] = float(np.mean(samples.energies[finite]))
    angles = _phi_psi_or_none(samples.positions, molsys.topology)
    if angles is not None:
        m["phi_positive_fraction"], m["phi_positive_fraction_stderr"] = weighted_mean((angles[:, 0] > 0).astype(float), log_w)

    ref = None
    if reference is not None:
        from openmm_cmt.reference.replica_exchange import load_reference

        ref = load_reference(reference)
        x_ref = torch.as_tensor(ref["frames"], dtype=torch.float64)
        if x_ref.shape[1:] != (molsys.n_atoms, 3):
            raise ValueError(f"reference frames have shape {tuple(x_ref.shape[1:])}, expected ({molsys.n_atoms}, 3)")
        log_q_ref = np.concatenate([sampler.log_prob(x_ref[i : i + 65536]) for i in range(0, len(x_ref), 65536)])
        e_ref = np.asarray(ref["energies"], dtype=np.float64)
        log_p_ref = -e_ref / kT
        ok = np.isfinite(log_q_ref)
        m["reference_frames"] = int(len(x_ref))
        m["reference_outside_support"] = int((~ok).sum())
        # Frames outside the generator's support (q = 0) make the forward ESS zero; report
        # their count, and the ESS over the rest.
        m["forward_ess"] = metrics.forward_ess(log_p_ref[ok] - log_q_ref[ok]) if ok.any() else 0.0
        m["forward_ess_includes_outside_support"] = bool(ok.all())
        m["eubo"] = metrics.eubo(log_p_ref[ok], log_q_ref[ok])
        m["nll"] = metrics.nll(log_q_ref[ok])
        m["reference"] = os.path.abspath(reference)
        diagnostics = ref.get("diagnostics") if isinstance(ref.get("diagnostics"), dict) else {}
        if "mean_energy_sem" in diagnostics:
            # Replica exchange knows better: the spread between independent ladders.
            m["reference_mean_energy"], m["reference_mean_energy_stderr"] = (
                float(diagnostics["mean_energy"]), float(diagnostics["mean_energy_sem"]))
        else:
            m["reference_mean_energy"], m["reference_mean_energy_stderr"] = block_mean(e_ref)
        ref_angles = ref.get("phi_psi")
        if ref_angles is None:
            ref_angles = _phi_psi_or_none(ref["frames"], molsys.topology)
        if angles is not None and ref_angles is not None:
            w = np.exp(log_w[finite] - log_w[finite].max())
            m["ramachandran_tv"] = metrics.ramachandran_tv(ref_angles, angles[finite], bins=bins, weights_b=w).value
            m["ramachandran_kl"] = metrics.ramachandran_kl(ref_angles, angles[finite], bins=bins, weights_model=w).value
            m["ramachandran_bins"] = bins
            m["ramachandran_n_reference"] = int(len(ref_angles))
            m["ramachandran_n_generator"] = int(finite.sum())
            m["ramachandran_generator_ess"] = float(generator_ess * finite.sum())
            if "phi_positive_fraction_sem" in diagnostics:
                m["reference_phi_positive_fraction"] = float(diagnostics["phi_positive_fraction"])
                m["reference_phi_positive_fraction_stderr"] = float(diagnostics["phi_positive_fraction_sem"])
            else:
                m["reference_phi_positive_fraction"], m["reference_phi_positive_fraction_stderr"] = block_mean(
                    (ref_angles[:, 0] > 0).astype(float))
    m["evaluation_target_evaluations"] = int(n_samples)
    m["evaluation_wall_s"] = time.perf_counter() - t0

    atomic_write_json(os.path.join(out_dir, "metrics.json"), m)
    atomic_write_json(os.path.join(out_dir, "history.json"), sampler.history)
    if plots:
        write_report(out_dir, sampler, m, samples, angles, ref)
    return m


def write_report(out_dir, sampler, m, samples, angles, ref) -> str:
    """PNG plots and ``report.html`` in ``out_dir``; returns the report's path."""
    images = []

    def add(name, ok):
        if ok:
            images.append(os.path.join(out_dir, name))

    finite = np.isfinite(samples.log_weights)
    if angles is not None:
        ref_angles = None if ref is None else ref.get("phi_psi")
        add("ramachandran.png", report.ramachandran_plot(
            os.path.join(out_dir, "ramachandran.png"), angles[finite], samples.log_weights[finite], ref_angles))
    add("annealing.png", report.annealing_plot(os.path.join(out_dir, "annealing.png"), sampler.history))
    add("ess.png", report.ess_plot(os.path.join(out_dir, "ess.png"), sampler.history))
    add("energy.png", report.energy_plot(
        os.path.join(out_dir, "energy.png"), samples.energies, samples.log_weights,
        None if ref is None else np.asarray(ref["energies"])))
    note = "" if images else "matplotlib is not installed: plots skipped (pip install 'openmm-cmt[plots]')."
    path = os.path.join(out_dir, "report.html")
    report.write_html(path, f"openmm_cmt run: {sampler.molsys.name}", m, images, note)
    return path
