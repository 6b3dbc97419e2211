"""Constrained Mass Transport: the dual step, annealing paths, replay buffer, trainer."""

from openmm_cmt.cmt.buffer import ReplayBuffer
from openmm_cmt.cmt.dual import DualSolution, annealing_step, solve_dual
from openmm_cmt.cmt.paths import PATHS, AnnealingPath, geometric_exponents, ladder_betas, make_path, register_path
from openmm_cmt.cmt.target import BoltzmannTarget, FunctionTarget, Target
from openmm_cmt.cmt.trainer import CMTConfig, CMTTrainer

__all__ = [
    "AnnealingPath",
    "BoltzmannTarget",
    "CMTConfig",
    "CMTTrainer",
    "DualSolution",
    "FunctionTarget",
    "PATHS",
    "ReplayBuffer",
    "Target",
    "annealing_step",
    "geometric_exponents",
    "ladder_betas",
    "make_path",
    "register_path",
    "solve_dual",
]
