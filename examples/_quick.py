"""What the examples share: the ``--quick`` smoke mode and the tiny training run it uses."""

from openmm_cmt.presets import preset


def add_quick_argument(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny sizes, a few seconds; the numbers mean nothing")


def training_config(quick: bool):
    """The laptop preset, or for ``--quick`` a generator and CMT run small enough to train
    in a few seconds (two annealing steps: far from converged)."""
    if not quick:
        return "laptop"
    return preset(
        "laptop",
        generator=dict(n_layers=2, hidden=16, depth=1, seed=0),
        cmt=dict(n_steps=2, samples_per_step=256, buffer_size=512, grad_steps_per_step=3, batch_size=128, seed=0),
        energy_compile=False,
        device="cpu",
    )


def trained_sampler(args, make_sampler):
    """``BoltzmannGeneratorSampler.load(args.run)`` when a run is given, else
    ``make_sampler(config)`` trained with ``training_config(args.quick)``."""
    from openmm_cmt import BoltzmannGeneratorSampler

    if args.run:
        return BoltzmannGeneratorSampler.load(args.run)
    sampler = make_sampler(training_config(args.quick))
    sampler.train(progress=not args.quick)
    return sampler
