"""One-shot pruning of large language models: Wanda, SparseGPT, magnitude, N:M, OWL;
structured shrinking (:func:`shrink`: MLP channels, key-value groups, whole blocks).

:func:`prune` walks the decoder blocks one after the other on calibration
data, as the papers do; mask selection runs on fastprune's selection ops
(``ops.row_kselect``, ``ops.nm_select``, ``ops.kselect``), the linear algebra
on torch's. :func:`prune_checkpoint` does the same for a checkpoint folder
read and written block by block (``python -m fastprune.llm``); :func:`shrink`
removes whole MLP channels, key-value groups and blocks. All run on the
block walker of :mod:`fastprune.llm.walker`.
"""
from .api import METHODS, prune
from .blocks import block_linears, find_blocks
from .calibration import load_text_calibration, normalize_calibration
from .checkpoint import prune_checkpoint
from .owl import outlier_ratio, owl_sparsities
from .patterns import parse_pattern
from .report import BlockReport, LayerReport, PruneReport
from .shrinking import ShrinkBlock, ShrinkReport, shrink

__all__ = [
    "prune",
    "prune_checkpoint",
    "shrink",
    "ShrinkReport",
    "ShrinkBlock",
    "METHODS",
    "PruneReport",
    "LayerReport",
    "BlockReport",
    "find_blocks",
    "block_linears",
    "normalize_calibration",
    "load_text_calibration",
    "parse_pattern",
    "outlier_ratio",
    "owl_sparsities",
]
