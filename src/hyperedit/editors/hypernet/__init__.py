"""The hypernetwork family: shifts from keys and value gradients, aggregated per edit.

MALMEN (least squares), MEND (summed rank-1 terms), RLEdit (MALMEN trained over trajectories),
HiEdit (a policy choosing the modules of MALMEN's or MEND's shifts) and UltraEdit (the same
least-squares solve with training-free value differences). ``config``: their options; ``base``:
the editing loop and the ``HyperEditor`` base; ``ridge``: the least-squares solve and its
gradient; ``joint``: MALMEN's one solve over all modules; ``contrast``: subject-swapped rows to
keep; ``checkpoint``: what a trained checkpoint records (files: ``editors.checkpoint``);
``shipped``: the checkpoints shipped in the package. Importing the package registers its editors.
"""
from .base import Accumulator, Cache, HyperEditor, cache_requests, edit_lr_parameters, parameter_groups, token_slices
from .config import DirectionOptions, HyperEditorConfig, resolve_layers
from .contrast import asked, subject_swaps
from .hiedit import HiEditConfig, HiEditEditor
from .joint import JointRows, JointSolve
from .malmen import MalmenAccumulator, MalmenConfig, MalmenEditor, NormalEquation, ProjectedSolve
from .mend import MendConfig, MendEditor, SummedShifts
from .ridge import RidgeFactor, ridge_matrix, ridge_solve, ridge_solve_backward
from .rledit import RLEditConfig, RLEditEditor
from .shipped import shipped_checkpoint, shipped_folders
from .ultraedit import UltraEdit, UltraEditConfig

__all__ = [
    "Accumulator", "Cache", "DirectionOptions", "HiEditConfig", "HiEditEditor", "HyperEditor", "HyperEditorConfig",
    "JointRows", "JointSolve", "MalmenAccumulator", "MalmenConfig", "MalmenEditor", "MendConfig", "MendEditor",
    "NormalEquation", "ProjectedSolve", "RLEditConfig", "RLEditEditor", "RidgeFactor", "SummedShifts", "UltraEdit",
    "UltraEditConfig", "asked", "cache_requests", "edit_lr_parameters", "parameter_groups", "resolve_layers",
    "ridge_matrix", "ridge_solve", "ridge_solve_backward", "shipped_checkpoint", "shipped_folders", "subject_swaps",
    "token_slices",
]
