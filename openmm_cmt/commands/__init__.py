"""The subcommands of ``openmm-cmt``; shared options live here."""

TRUST_HELP = ("load a run folder whose System carries serialised Python (an openmm.PythonForce, e.g. "
              "an openmm-ml potential); loading it runs that code, so only for folders you trust")


def add_trust_argument(parser) -> None:
    """``--trust-run``: allow run folders whose System would execute code when loaded."""
    parser.add_argument("--trust-run", action="store_true", help=TRUST_HELP)
