"""The public API is documented in torch's style, and the examples in it run.

Rules checked for every public function and class of ``fastprune.__all__``
(torch's private helpers and the ``structured`` subpackage excepted), the op
wrappers of ``fastprune.ops`` and the Lightning callback:

* ``Args:`` naming every argument, when the callable takes arguments (for a
  class: its constructor, documented in the class or ``__init__`` docstring);
* ``Returns:`` for functions whose return annotation is not ``None``;
* ``Raises:`` for functions and constructors that take arguments, since they
  validate them (the few that check nothing are listed below, with why);
* the same ``Args:`` / ``Returns:`` rules for the public methods a class
  defines itself.

The ``Example::`` blocks of those objects are executed, so they stay correct.
"""
from __future__ import annotations

import inspect
import re
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastprune
from fastprune import ops

# Callables that take arguments but validate none of them, so they document no Raises.
NO_VALIDATION = {
    "is_pruned": "reads the hooks of whatever module it is given",
    "CustomFromMask": "the mask is checked when compute_mask runs, as in torch",
    "MaskSet": "built by sparsify_ from targets it has already validated",
    "PruningShapeError": "an exception: its arguments are the message",
    "PruningNameError": "an exception: its arguments are the message",
}

# Examples that need more than torch, nn, F and fastprune (a trained model, Lightning).
EXAMPLE_NOT_SELF_CONTAINED = {"snip_scores", "ModelPruning"}

SECTION = re.compile(r"^([A-Z][A-Za-z ]*):{1,2}\s*$", re.M)


def _public_objects():
    out = []
    for name in fastprune.__all__:
        if name.startswith("_"):
            continue
        obj = getattr(fastprune, name)
        if isinstance(obj, types.ModuleType) or not callable(obj):
            continue
        if getattr(obj, "__module__", "").startswith("fastprune.structured"):
            continue
        out.append((name, obj))
    for name in ops.__all__:
        obj = getattr(ops, name)
        if callable(obj) and obj.__module__ == ops.__name__:  # the wrappers, not the reference helpers
            out.append((f"ops.{name}", obj))
    try:
        from fastprune.lightning import ModelPruning
    except ImportError:
        pass
    else:
        out.append(("ModelPruning", ModelPruning))
    return out


PUBLIC = _public_objects()


def _methods(cls):
    """Public methods ``cls`` defines itself (inherited ones are documented where defined)."""
    found = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (classmethod, staticmethod)):
            found.append((name, attr.__func__))
        elif inspect.isfunction(attr):
            found.append((name, attr))
    return found


def _sections(doc: str):
    """``{section name: body}`` of a Google-style docstring."""
    heads = list(SECTION.finditer(doc))
    return {
        m.group(1): doc[m.end(): heads[i + 1].start() if i + 1 < len(heads) else len(doc)]
        for i, m in enumerate(heads)
    }


def _arguments(fn, *, bound: bool):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtin constructors (exceptions)
        return None, inspect.Signature.empty
    params = list(sig.parameters.values())
    if bound and params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [p.name for p in params], sig.return_annotation


def _check_args(label, doc, names):
    if not names:
        return
    sections = _sections(doc)
    assert "Args" in sections, f"{label}: no Args: section for {names}"
    # An entry starts an indented line: "    name (type): ..." or "    a, b, name: as in ...".
    missing = [
        n for n in names if not re.search(rf"^    (?:\w+, )*{re.escape(n)}[ :,(]", sections["Args"], re.M)
    ]
    assert not missing, f"{label}: Args: has no entry for {missing}"


def _returns_something(annotation) -> bool:
    return annotation not in (None, "None", type(None))


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_public_callable_documented(name, obj):
    if inspect.isclass(obj):
        init = vars(obj).get("__init__")
        doc = (inspect.getdoc(obj) or "") + "\n\n" + ((inspect.getdoc(init) or "") if init else "")
        names, _ = _arguments(obj, bound=False)
        assert doc.strip(), f"{name}: no docstring"
        if names is None:  # an exception: documented, constructor is BaseException's
            return
        _check_args(name, doc, names)
        if names and name not in NO_VALIDATION:
            assert "Raises" in _sections(doc), f"{name}: the constructor validates its arguments; no Raises:"
        for mname, method in _methods(obj):
            mdoc = inspect.getdoc(method) or ""
            label = f"{name}.{mname}"
            assert mdoc.strip(), f"{label}: no docstring"
            mnames, mret = _arguments(method, bound=True)
            _check_args(label, mdoc, mnames)
    else:
        doc = inspect.getdoc(obj) or ""
        assert doc.strip(), f"{name}: no docstring"
        names, ret = _arguments(obj, bound=False)
        _check_args(name, doc, names)
        sections = _sections(doc)
        if _returns_something(ret):
            assert "Returns" in sections, f"{name}: returns {ret!r}; no Returns: section"
        if names and name not in NO_VALIDATION:
            assert "Raises" in sections, f"{name}: validates its arguments; no Raises: section"


def test_methods_that_return_document_it():
    # Methods without a return annotation return something (compute_mask, apply,
    # prune...), so only those annotated ``-> None`` may omit Returns:.
    for name, obj in PUBLIC:
        if not inspect.isclass(obj):
            continue
        for mname, method in _methods(obj):
            _, ret = _arguments(method, bound=True)
            if _returns_something(ret):
                doc = inspect.getdoc(method) or ""
                assert "Returns" in _sections(doc), f"{name}.{mname}: no Returns: section"


def _as_code(example: str) -> str:
    """Doctest-style examples (``>>>`` prompts) as plain code; their expected output lines are dropped."""
    lines = example.splitlines()
    if not any(line.lstrip().startswith(">>>") for line in lines):
        return example
    code = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(">>> ") or stripped == ">>>":
            code.append(stripped[4:])
        elif stripped.startswith("... ") or stripped == "...":
            code.append(stripped[4:])
    return "\n".join(code)


def _examples():
    found = []
    for name, obj in PUBLIC:
        if name in EXAMPLE_NOT_SELF_CONTAINED:
            continue
        docs = [(name, inspect.getdoc(obj) or "")]
        if inspect.isclass(obj):
            docs += [(f"{name}.{m}", inspect.getdoc(f) or "") for m, f in _methods(obj)]
        for label, doc in docs:
            body = _sections(doc).get("Example")
            if body:
                found.append((label, _as_code(textwrap.dedent(body).strip("\n"))))
    return found


EXAMPLES = _examples()


def test_examples_exist():
    labels = {label for label, _ in EXAMPLES}
    for expected in ("l1_unstructured", "global_unstructured", "sparsify_", "MaskSet", "snip", "synflow",
                     "pruning_schedule", "LotteryTicket", "patch_torch", "ops.kselect_"):
        assert expected in labels


@pytest.mark.parametrize("label,code", EXAMPLES, ids=[label for label, _ in EXAMPLES])
def test_docstring_example_runs(label, code):
    torch.manual_seed(0)
    namespace = {"torch": torch, "nn": nn, "F": F, "prune": fastprune, "fastprune": fastprune}
    exec(compile(code, f"<example of {label}>", "exec"), namespace)
    assert not fastprune.is_torch_patched()
