"""The one error a System that TorchEnergy cannot compile raises."""


class UnsupportedSystemError(ValueError):
    """An OpenMM System uses forces or features TorchEnergy does not implement.

    Raised at build time. ``problems`` lists every unsupported force or feature found,
    one string each; the message joins them. ``OpenMMEnergy`` remains the exact fallback.
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"TorchEnergy cannot compile this System ({len(self.problems)} unsupported "
            f"item{'s' if len(self.problems) != 1 else ''}):\n{lines}\n"
            "Use OpenMMEnergy (energy='openmm') for it."
        )
