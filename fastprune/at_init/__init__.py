"""Pruning at initialisation: SNIP, iterative SNIP, FORCE and SynFlow.

``scores`` computes the importance of every unit (the dict that
``global_unstructured(importance_scores=...)`` takes); ``methods`` prunes with
them, installing exact global masks torch-style.
"""
from . import scores
from .scores import force_scores, magnitude_scores, snip_scores, synflow_scores
from .methods import force, iterative_snip, snip, synflow

__all__ = [
    "scores", "snip", "iterative_snip", "force", "synflow",
    "snip_scores", "force_scores", "synflow_scores", "magnitude_scores",
]
