"""Benchmark tooling: fastprune against ``torch.nn.utils.prune``, side by side.

``python -m fastprune.bench`` builds a model (by default a Llama-shaped stack of
``nn.Linear`` layers sized by ``--params``), then for each case times torch and
fastprune, measures the peak memory of each call, checks the masks and prints a
table. Every (case, library) pair runs in a fresh process. Weights are
regenerated layer by layer from a seed wherever the original values are needed
(to check masks, or to undo an in-place prune), so no copy of the model is held.

The modules, one job each:

- :mod:`~fastprune.bench.models`: model shapes and regenerable weights,
  undoing a prune (:func:`unprune_`, :func:`regenerate_`);
- :mod:`~fastprune.bench.cases`: what each case calls in each library, and the
  floor it is judged against (:data:`CASE_FLOORS`);
- :mod:`~fastprune.bench.floors`: the floors (:data:`FLOORS`: two first-touch
  copies of the weights, an in-place pass with 1-bit masks, the dense forward);
- :mod:`~fastprune.bench.memory`: peak and available memory, torch's expected need;
- :mod:`~fastprune.bench.masks`: bit files, :func:`compare_masks` (the one mask
  comparison, tie-aware) and :func:`check_exact`;
- :mod:`~fastprune.bench.worker`: one measurement in a fresh process (:func:`run_job`);
- :mod:`~fastprune.bench.runner`: all cases, one row each (:func:`run_benchmark`);
- :mod:`~fastprune.bench.table`: the printed table;
- :mod:`~fastprune.bench.cli`: the command line.

The scripts and pytest-benchmark suite under ``benchmarks/`` use the names
exported here.
"""
from .cases import (
    CASE_FLOORS,
    CASE_TITLES,
    CASES,
    FORWARD_CASES,
    GLOBAL_CASES,
    LIBRARIES,
    case_floor,
    library,
    pairs,
    prune_call,
)
from .floors import FLOORS, Floor, first_touch_copies, forward_all, forward_inputs, in_place_pass_with_bits
from .cli import build_parser, main
from .masks import (
    MaskComparison,
    check_exact,
    compare_bits,
    compare_masks,
    differences_are_ties,
    layer_scores,
    read_mask_file,
    unit_scores,
    write_mask_file,
)
from .memory import (
    PeakMemory,
    available_memory,
    current_memory,
    floor_fits,
    fresh_allocations,
    synchronize,
    torch_fits,
    torch_need,
)
from .models import (
    DTYPES,
    build_model,
    describe_model,
    fill_layer_,
    layer_weight,
    model_numel,
    model_shapes,
    parse_count,
    regenerate_,
    unprune_,
)
from .runner import mask_verdict, run_benchmark
from .table import format_mb, format_rows, format_table, format_time, machine_description
from .worker import run_job, worker

__all__ = [
    "CASES", "GLOBAL_CASES", "FORWARD_CASES", "CASE_TITLES", "LIBRARIES", "DTYPES",
    "library", "pairs", "prune_call",
    "CASE_FLOORS", "case_floor", "FLOORS", "Floor", "first_touch_copies", "in_place_pass_with_bits", "forward_inputs",
    "forward_all",
    "parse_count", "model_shapes", "model_numel", "describe_model", "fill_layer_", "layer_weight", "build_model",
    "regenerate_", "unprune_",
    "PeakMemory", "current_memory", "available_memory", "synchronize", "fresh_allocations", "torch_need", "torch_fits",
    "floor_fits",
    "write_mask_file", "read_mask_file", "unit_scores", "layer_scores", "MaskComparison", "compare_masks",
    "compare_bits", "differences_are_ties", "check_exact",
    "worker", "run_job", "run_benchmark", "mask_verdict",
    "format_time", "format_mb", "format_rows", "format_table", "machine_description",
    "build_parser", "main",
]
