"""The subcommands of ``openmm-cmt``; shared options live here."""

TRUST_HELP = ("load a run folder whose System carries serialised Python (an openmm.PythonForce, e.g. "
              "an openmm-ml potential); loading it runs that code, so only for folders you trust")


def add_trust_argument(parser) -> None:
    """``--trust-run``: allow run folders whose System would execute code when loaded."""
    parser.add_argument("--trust-run", action="store_true", help=TRUST_HELP)


def _number(kind, minimum, inclusive: bool):
    """An argparse ``type=`` that accepts a ``kind`` at or above ``minimum`` (strictly
    above unless ``inclusive``), with a message naming what was expected."""
    import argparse
    import math

    name = "an integer" if kind is int else "a number"
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {name} {bound}, got {text!r}") from None
        if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
            raise argparse.ArgumentTypeError(f"must be {name} {bound}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


#: argparse types for counts, seeds and physical settings.
positive_int = _number(int, 1, True)
non_negative_int = _number(int, 0, True)
positive_float = _number(float, 0, False)
non_negative_float = _number(float, 0, True)
