"""The locate-then-edit family: closed-form writes of optimised target vectors (MEMIT, AlphaEdit, MetaKE).

``base``: options, edited layers, the keys and residual stream at the last subject token;
``targets``: the target vectors (and ``TargetCache``); ``solve``: the closed-form solver maps and
MEMIT's layer loop; ``nullspace``: AlphaEdit's null space and key memory (also used by the
hypernetwork editors' direction control); ``editor``: the shared editing flow. Importing the
package registers its editors.
"""
from .alphaedit import AlphaEdit, AlphaEditConfig
from .base import LocateConfig, default_layers, keys_and_hidden, layer_module, subject_position
from .editor import LocateEditor
from .memit import MEMIT, MEMITConfig
from .metake import MetaKE, MetaKEConfig
from .nullspace import KeyState, NullSpaceOptions, held_directions, null_space_basis, null_space_projector
from .solve import SolveRecord, alphaedit_map, memit_map, proxy_grad
from .targets import TargetCache, Targets, compute_targets

__all__ = [
    "AlphaEdit", "AlphaEditConfig", "KeyState", "LocateConfig", "LocateEditor", "MEMIT", "MEMITConfig", "MetaKE",
    "MetaKEConfig", "NullSpaceOptions", "SolveRecord", "TargetCache", "Targets", "alphaedit_map", "compute_targets",
    "default_layers", "held_directions", "keys_and_hidden", "layer_module", "memit_map", "null_space_basis",
    "null_space_projector", "proxy_grad", "subject_position",
]
