"""Pure neural-network modules (no I/O): the editing hypernetwork and its input normaliser."""
from .hypernet import HyperBlock, HyperNet, HyperNets
from .normalizer import RunningMeanStd

__all__ = ["HyperBlock", "HyperNet", "HyperNets", "RunningMeanStd"]
