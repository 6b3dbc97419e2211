"""Evaluation of a trained generator: metrics.json, history.json, plots and report.html.

Heavy-tailed importance weights make one draw's ESS say little (two draws of the same
generator can differ tenfold), so the generator is sampled in ``n_draws`` independent
draws. Per draw: the reverse ESS, the Pareto k of the weights (PSIS) and every
reweighted observable with its delta-method error. Reported: the ESS's median, minimum
and maximum over the draws; each observable estimated from all draws together, with
its delta-method error, beside the spread (standard deviation) of the per-draw
estimates and the median per-draw delta-method error: where the spread is much larger
than that error, the error bars of a single draw cannot be trusted.

Per residue with backbone phi and psi: reweighted populations of the basins of
:mod:`openmm_cmt.metrics.basins` with bounds that stay informative for an empty basin,
and, with a reference, the Ramachandran TV and a mode-collapse verdict. Every histogram
distance comes with its bin count and sample sizes, since its noise floor grows with
bins / ESS.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from openmm_cmt import metrics, report
from openmm_cmt.io import atomic_write_json
from openmm_cmt.metrics import weighted_mean

#: Default number of independent draws of the generator.
N_DRAWS = 5


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


def load_matching_reference(path: str, molsys) -> dict:
    """The reference at ``path``; ValueError unless it was sampled from ``molsys``'s
    System (fingerprint), at its temperature, with its atom count."""
    from openmm_cmt.reference import check_reference, load_reference

    ref = load_reference(path)
    check_reference(ref["settings"], molsys, path)
    shape = tuple(np.shape(ref["frames"])[1:])
    if shape != (molsys.n_atoms, 3):
        raise ValueError(f"reference frames in {path} have shape {shape}, expected ({molsys.n_atoms}, 3)")
    return ref


def _residues(topology) -> list[str]:
    try:
        return metrics.backbone_residue_labels(topology)
    except ValueError:  # not a peptide
        return []


def _finite(value):
    """JSON has no inf or nan: None stands for them."""
    return float(value) if value is not None and math.isfinite(value) else None


def _over_draws(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "draws": v.tolist()}


def _draw(sampler, n: int, residues: list[str], generator: torch.Generator | None) -> dict:
    """One independent draw: weights, energies, backbone angles and per-draw statistics."""
    t0 = time.perf_counter()
    s = sampler.sample(n, generator=generator)
    t1 = time.perf_counter()
    angles = metrics.phi_psi(s.positions, sampler.molsys.topology, per_residue=True) if residues else None
    t2 = time.perf_counter()
    lw = s.log_weights
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError("every generator sample has a non-finite energy: the generator is broken")
    d = {"log_w": lw, "energies": s.energies, "angles": None if angles is None else angles.astype(np.float32),
         "sample_s": t1 - t0, "dihedral_s": t2 - t1}
    d["reverse_ess"] = metrics.reverse_ess(lw[finite]) * finite.mean()
    d["reverse_ess_clipped"] = metrics.reverse_ess(lw[finite], clip_fraction=1e-4) * finite.mean()
    d["pareto_k"] = metrics.pareto_khat(lw).k
    d["largest_weight_share"] = float(np.exp(lw[finite].max() - np.logaddexp.reduce(lw[finite])))
    d["observables"] = _observables(lw, s.energies, angles, residues)
    return d


def _observables(lw, energies, angles, residues) -> dict:
    """{name: (estimate, delta-method error)} of the reweighted observables."""
    out = {"mean_energy": weighted_mean(energies, lw)}
    if angles is not None:
        if len(residues) == 1:
            out["phi_positive_fraction"] = weighted_mean((angles[:, 0, 0] > 0).astype(float), lw)
        for r, label in enumerate(residues):
            pops = metrics.basin_populations(angles[:, r, 0], angles[:, r, 1], lw)
            for basin, p in pops.items():
                out[f"{label} {basin}"] = (p.population, p.stderr)
    return out


def evaluate(sampler, out_dir, n_samples: int = 100_000, reference: str | None = "auto", bins: int = 100,
             plots: bool = True, n_draws: int = N_DRAWS, generator: torch.Generator | None = None) -> dict:
    """Metrics of ``sampler``'s generator, written to ``out_dir``; returns them.

    Parameters
    ----------
    n_samples : int
        Generator samples per draw (each costs one exact float64 target evaluation,
        counted separately from training in ``evaluation_target_evaluations``).
    n_draws : int
        Independent draws (default 5): ESS and Pareto k per draw, observables over all.
    reference : str or None
        An ``.npz`` from ``openmm-cmt reference`` for forward metrics (forward ESS, EUBO,
        NLL, Ramachandran TV/KL, basin populations, mode collapse); ``"auto"`` takes the
        reference shipped for the system, if any. It must have been sampled from the
        run's System (fingerprint) at the run's temperature.
    generator : torch.Generator or None
        The random stream of the draws (on the sampler's device); None: torch's global RNG.
    """
    if not (isinstance(n_draws, (int, np.integer)) and n_draws >= 1):
        raise ValueError(f"n_draws must be a positive integer, got {n_draws!r}")
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 25):
        raise ValueError(f"n_samples (per draw) must be an integer >= 25 for the Pareto k diagnostic, got {n_samples!r}")
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    molsys = sampler.molsys
    reference = resolve_reference(reference, molsys.name)
    ref = None if reference is None else load_matching_reference(reference, molsys)
    residues = _residues(molsys.topology)
    draws = [_draw(sampler, int(n_samples), residues, generator) for _ in range(n_draws)]
    lw = np.concatenate([d["log_w"] for d in draws])
    energies = np.concatenate([d["energies"] for d in draws])
    angles = None if not residues else np.concatenate([d["angles"] for d in draws])
    finite = np.isfinite(lw)
    ess = _over_draws([d["reverse_ess"] for d in draws])
    clipped = _over_draws([d["reverse_ess_clipped"] for d in draws])
    tail = metrics.pareto_khat(lw)
    m: dict = {
        "system": molsys.name,
        "temperature_K": molsys.temperature,
        "n_draws": int(n_draws),
        "draw_size": int(n_samples),
        "n_samples": int(lw.size),
        "n_nonfinite_energy": int((~finite).sum()),
        # The median over draws: one heavy-tailed draw can be off tenfold either way.
        "reverse_ess": ess["median"],
        "reverse_ess_min": ess["min"],
        "reverse_ess_max": ess["max"],
        "reverse_ess_draws": ess["draws"],
        "reverse_ess_clipped": clipped["median"],
        "reverse_ess_clipped_draws": clipped["draws"],
        "pareto_k": _finite(tail.k),
        "pareto_k_reading": tail.reading,
        "pareto_k_tail_length": tail.tail_length,
        "pareto_k_draws": [_finite(d["pareto_k"]) for d in draws],
        "largest_weight_share_draws": [d["largest_weight_share"] for d in draws],
        "log_z_estimate": metrics.log_z_estimate(lw[finite]) + float(np.log(finite.mean())),
        "target_evaluations": int(sampler.n_evaluations),
        "wall_s": float(sampler.trainer.wall_s) if sampler.trainer is not None else 0.0,
        "annealing_steps": len(sampler.history),
        "mean_energy_unweighted": float(np.mean(energies[finite])),
    }
    pooled = _observables(lw, energies, angles, residues)
    for name, (value, err) in pooled.items():
        if " " in name:  # basin populations go into the per-residue table
            continue
        per_draw = [d["observables"][name] for d in draws]
        m[name], m[name + "_stderr"] = value, err
        m[name + "_draws"] = [v for v, _ in per_draw]
        m[name + "_draw_spread"] = float(np.std([v for v, _ in per_draw], ddof=1)) if n_draws > 1 else None
        m[name + "_draw_stderr"] = float(np.median([e for _, e in per_draw]))
    if residues:
        m["residues"] = _residue_table(residues, angles, lw, draws)
    ref_angles = None if ref is None or not residues else _reference_angles(ref, molsys, len(residues))
    if ref is not None:
        _reference_metrics(m, sampler, ref, reference, angles, ref_angles, lw, bins)
    m["evaluation_target_evaluations"] = int(lw.size)
    m["evaluation_sampling_s"] = float(sum(d["sample_s"] for d in draws))
    m["evaluation_dihedrals_s"] = float(sum(d["dihedral_s"] for d in draws))
    atomic_write_json(os.path.join(out_dir, "history.json"), sampler.history)
    if plots:
        t_plots = time.perf_counter()
        report.write_run_report(out_dir, sampler, m, lw, energies, angles, residues, ref, ref_angles)
        m["evaluation_plots_s"] = time.perf_counter() - t_plots
    m["evaluation_wall_s"] = time.perf_counter() - t0
    atomic_write_json(os.path.join(out_dir, "metrics.json"), m)
    return m


def _residue_table(residues, angles, lw, draws) -> list[dict]:
    """Per residue: reweighted basin populations from all draws, with the draw spread."""
    table = []
    for r, label in enumerate(residues):
        pops = metrics.basin_populations(angles[:, r, 0], angles[:, r, 1], lw)
        basins = {}
        for basin, p in pops.items():
            row = p.as_dict()
            per_draw = [d["observables"][f"{label} {basin}"][0] for d in draws]
            row["draw_spread"] = float(np.std(per_draw, ddof=1)) if len(draws) > 1 else None
            basins[basin] = row
        table.append({"residue": label, "basins": basins})
    return table


def _reference_angles(ref, molsys, n_residues: int):
    """Reference (phi, psi) per residue ``[F, R, 2]``: stored, else computed from frames."""
    phi, psi = ref.get("phi"), ref.get("psi")
    if phi is not None and psi is not None and np.ndim(phi) == 2 and np.shape(phi)[1] == n_residues:
        return np.stack([phi, psi], axis=-1)
    return metrics.phi_psi(ref["frames"], molsys.topology, per_residue=True)


def _reference_metrics(m, sampler, ref, path, angles, ref_angles, lw, bins) -> None:
    """Forward ESS, EUBO, NLL and, per residue, Ramachandran distances, reference basin
    populations and the mode-collapse verdict."""
    molsys = sampler.molsys
    x_ref = torch.as_tensor(ref["frames"], dtype=torch.float64)
    log_q_ref = np.concatenate([sampler.log_prob(x_ref[i : i + 65536]) for i in range(0, len(x_ref), 65536)])
    e_ref = np.asarray(ref["energies"], dtype=np.float64)
    log_p_ref = -e_ref / molsys.kT
    ok = np.isfinite(log_q_ref)
    m["reference"] = os.path.abspath(path)
    m["reference_frames"] = int(len(x_ref))
    m["reference_outside_support"] = int((~ok).sum())
    # Frames outside the generator's support (q = 0) make the forward ESS zero; report
    # their count, and the ESS over the rest.
    m["forward_ess"] = metrics.forward_ess(log_p_ref[ok] - log_q_ref[ok]) if ok.any() else 0.0
    m["forward_ess_includes_outside_support"] = bool(ok.all())
    m["eubo"] = metrics.eubo(log_p_ref[ok], log_q_ref[ok]) if ok.any() else None
    m["nll"] = metrics.nll(log_q_ref[ok]) if ok.any() else None
    diagnostics = ref["diagnostics"] if isinstance(ref.get("diagnostics"), dict) else {}
    if "mean_energy_sem" in diagnostics:
        # Replica exchange knows better: the spread between independent ladders.
        m["reference_mean_energy"] = float(diagnostics["mean_energy"])
        m["reference_mean_energy_stderr"] = float(diagnostics["mean_energy_sem"])
    else:
        m["reference_mean_energy"], m["reference_mean_energy_stderr"] = block_mean(e_ref)
    if ref_angles is None:
        return
    finite = np.isfinite(lw)
    w = np.exp(lw[finite] - lw[finite].max())
    reference_pops, generator_pops, tv, kl = {}, {}, [], []
    # Replica exchange records each residue's basins with the spread between its ladders,
    # an error that sees correlation in time; blocks of frames are the fallback.
    ladder_rows = diagnostics.get("residues")
    if not (isinstance(ladder_rows, list) and len(ladder_rows) == len(m["residues"])):
        ladder_rows = None
    for r, row in enumerate(m["residues"]):
        label = row["residue"]
        ref_basin = metrics.basin_index(ref_angles[:, r, 0], ref_angles[:, r, 1])
        reference_pops[label] = {}
        for b, basin in enumerate(metrics.BASINS):
            value, err = block_mean((ref_basin == b).astype(float))
            ladder_sem = ladder_rows[r]["basins"].get(basin, {}).get("sem") if ladder_rows else None
            if ladder_sem is not None:
                err = float(ladder_sem)
            reference_pops[label][basin] = value
            row["basins"][basin].update(reference=value, reference_stderr=err)
        generator_pops[label] = {basin: metrics.BasinPopulation(**{k: row["basins"][basin][k] for k in (
            "population", "stderr", "lower95", "upper95", "n_samples")}) for basin in metrics.BASINS}
        a = angles[finite, r].astype(np.float64)
        tv.append(metrics.ramachandran_tv(ref_angles[:, r], a, bins=bins, weights_b=w).value)
        kl.append(metrics.ramachandran_kl(ref_angles[:, r], a, bins=bins, weights_model=w).value)
        row["ramachandran_tv"], row["ramachandran_kl"] = tv[-1], kl[-1]
    m["ramachandran_tv"] = float(np.mean(tv))  # mean over residues; per residue in "residues"
    m["ramachandran_kl"] = float(np.mean(kl))
    m["ramachandran_bins"] = bins
    m["ramachandran_n_reference"] = int(len(ref_angles))
    m["ramachandran_n_generator"] = int(finite.sum())
    m["ramachandran_generator_ess"] = float(w.sum() ** 2 / np.sum(w**2))
    if len(tv) == 1:
        if "phi_positive_fraction_sem" in diagnostics:
            m["reference_phi_positive_fraction"] = float(diagnostics["phi_positive_fraction"])
            m["reference_phi_positive_fraction_stderr"] = float(diagnostics["phi_positive_fraction_sem"])
        else:
            m["reference_phi_positive_fraction"], m["reference_phi_positive_fraction_stderr"] = block_mean(
                (ref_angles[:, 0, 0] > 0).astype(float))
    collapsed = metrics.mode_collapse(reference_pops, generator_pops)
    m["mode_collapse"] = bool(collapsed)
    m["mode_collapse_basins"] = collapsed


def summary_lines(m: dict) -> list[str]:
    """Lines for the terminal on the robustness of the metrics: ESS over the draws,
    Pareto k and, per residue, basin populations and the collapse verdict."""
    lines = [f"  reverse ESS over {m['n_draws']} draws of {m['draw_size']}: median {m['reverse_ess']:.4g}, "
             f"min {m['reverse_ess_min']:.4g}, max {m['reverse_ess_max']:.4g}",
             f"  Pareto k {'n/a' if m['pareto_k'] is None else format(m['pareto_k'], '.3g')} "
             f"({m['pareto_k_reading']}; > 0.7: importance-sampling estimates unreliable)"]
    for res in m.get("residues", []):
        parts = [f"{basin} {b['population']:.3g} (<= {b['upper95']:.2g})" for basin, b in res["basins"].items()]
        tv = f", Ram. TV {res['ramachandran_tv']:.3f}" if "ramachandran_tv" in res else ""
        lines.append(f"  {res['residue']}: " + ", ".join(parts) + tv)
    if "mode_collapse" in m:
        missed = ", ".join(f"{c['residue']} {c['basin']}" for c in m["mode_collapse_basins"])
        lines.append(f"  mode collapse: {'YES (' + missed + ')' if m['mode_collapse'] else 'no'}")
    return lines
