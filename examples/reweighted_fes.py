"""Reweighted phi/psi free-energy surface of alanine dipeptide from generator samples.

The generator's samples follow q, not the Boltzmann distribution; their importance
weights exp(-u(x) - log q(x)) make any histogram of them a Boltzmann one::

    python examples/reweighted_fes.py --run runs/demo --out fes.png   # a run from `make demo`
    python examples/reweighted_fes.py --out fes.png                   # trains the laptop preset first (~8 min)
    python examples/reweighted_fes.py --quick --out fes.png           # smoke mode: seconds, unconverged

The samples can also be kept for other tools: ``--samples samples.h5`` (mdtraj HDF5 with
the weights inside), ``.dcd``/``.xtc``/``.pdb`` (weights in ``FILE.data.npz``) or ``.npz``.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mdtraj  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from openmm_cmt import BoltzmannGeneratorSampler  # noqa: E402
from openmm_cmt.metrics import reverse_ess  # noqa: E402

from _quick import add_quick_argument, trained_sampler  # noqa: E402


def free_energy_surface(phi, psi, log_weights, kT: float, bins: int):
    """F(phi, psi) in kJ/mol (minimum 0; +inf where no sample falls) and the bin edges."""
    ok = np.isfinite(log_weights)
    weights = np.exp(log_weights[ok] - log_weights[ok].max())
    # The one line of reweighted analysis: a weighted histogram of generator samples.
    density, phi_edges, psi_edges = np.histogram2d(phi[ok], psi[ok], bins=bins, range=[[-np.pi, np.pi]] * 2,
                                                   weights=weights, density=True)
    with np.errstate(divide="ignore"):
        f = -kT * np.log(density)
    return f - f[np.isfinite(f)].min(), phi_edges, psi_edges


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="run folder from openmm-cmt train (default: train one)")
    parser.add_argument("--n", type=int, default=None, help="samples (default 100000; 2000 with --quick)")
    parser.add_argument("--bins", type=int, default=60, help="histogram bins per angle (default 60)")
    parser.add_argument("--f-max", type=float, default=40.0, help="top of the colour scale, kJ/mol (default 40)")
    parser.add_argument("--out", default="fes.png", help="PNG of the surface (default fes.png)")
    parser.add_argument("--samples", default=None, help="also write the weighted samples here (.h5, .dcd, ...)")
    parser.add_argument("--seed", type=int, default=0)
    add_quick_argument(parser)
    args = parser.parse_args(argv)
    n = args.n or (2000 if args.quick else 100_000)

    sampler = trained_sampler(args, lambda config: BoltzmannGeneratorSampler.from_name("alanine-dipeptide", config))
    torch.manual_seed(args.seed)
    samples = sampler.sample(n)
    if args.samples:
        print("samples ->", " + ".join(samples.save(args.samples)))
    trajectory = samples.to_mdtraj()
    phi = mdtraj.compute_phi(trajectory)[1][:, 0]
    psi = mdtraj.compute_psi(trajectory)[1][:, 0]
    kT = sampler.molsys.kT
    f, phi_edges, psi_edges = free_energy_surface(phi, psi, samples.log_weights, kT, args.bins)
    ok = np.isfinite(samples.log_weights)
    print(f"{n} samples, reverse ESS {reverse_ess(samples.log_weights[ok]) * ok.mean():.3f}; "
          f"F from 0 to {f[np.isfinite(f)].max():.1f} kJ/mol over {np.isfinite(f).sum()} of {f.size} bins")

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mesh = ax.pcolormesh(phi_edges, psi_edges, np.ma.masked_invalid(f).T, cmap="viridis", shading="flat",
                         vmin=0.0, vmax=args.f_max)
    fig.colorbar(mesh, ax=ax, label="F (kJ/mol)", extend="max")
    ax.set(xlabel=r"$\phi$ (rad)", ylabel=r"$\psi$ (rad)", title=f"alanine dipeptide, {sampler.molsys.temperature:.0f} K, reweighted")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"-> {args.out}")
    sampler.close()


if __name__ == "__main__":
    main()
