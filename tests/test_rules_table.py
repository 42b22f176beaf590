"""No rule untested: every primitive funcgrad has a VJP rule for is reached by a Case, and every
Case is checked against jax.grad.

Each rule family of src/funcgrad/interpret/rules/<family>.py has its test file
tests/test_rules_<family>.py, which exposes ``CASES``: user code (jnp, lax, jax.nn, ...) reaching
each primitive of the family. This file gathers them all and
  - asserts that every name in ``fg.supported_primitives()`` is some Case's primitive;
  - runs ``check`` on every Case in float32: the case reaches its primitive, and fg.grad equals
    jax.grad on a weighted sum of its outputs with fixed random (non-uniform) weights, eagerly and
    under jit (under jit only for the few cases marked ``eager=False``, whose op-by-op jax.grad
    takes seconds).
The family files keep what a table cannot say: ties, NaNs, zero sizes, float64, second order.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import jax.numpy as jnp
import pytest
from gradcheck import Case, check, randn

import funcgrad as fg
from funcgrad.interpret import rules
from funcgrad.interpret.registry import lookup_higher_order, lookup_vjp

RULE_FAMILIES = sorted(m.name for m in pkgutil.iter_modules(rules.__path__)
                       if not m.name.startswith("_"))
# Each family's test files: tests/test_rules_<family>.py and tests/test_rules_<family>_<part>.py
# (a family with a large test suite splits it, e.g. decompositions and decompositions_spectral).
TEST_FILES = {
    family: sorted(p.stem for p in Path(__file__).parent.glob(f"test_rules_{family}*.py")
                   if p.stem == f"test_rules_{family}"
                   or p.stem.removeprefix(f"test_rules_{family}_") not in RULE_FAMILIES)
    for family in RULE_FAMILIES
}
FAMILIES = {family: [importlib.import_module(name) for name in names]
            for family, names in TEST_FILES.items()}

# funcgrad_tag's rule is registered beside Trace (interpret/tagging.py), not by a rule family.
TAG_CASES = [
    Case("fg.tag", "funcgrad_tag", lambda w, x: jnp.tanh(fg.tag(x @ w, "z")),
         lambda: (randn(0, 3, 4), randn(1, 5, 3)), argnums=(0, 1)),
]

UNREACHABLE: dict[str, str] = {
    "check": "checkify.check runs eagerly or under checkify.checkify, which removes it before "
    "jit: no Case can run under jit; test_rules_nondiff.py tests it both ways",
    "pbroadcast": "no CPU lowering in jaxlib 0.10.2, and jax.grad of it fails; "
    "test_rules_collectives.py tests its rule against its definition under vmap",
}
"""Primitives with a rule but no Case: name -> why no Case can hold it against jax.grad. Every
other rule is reached (``call`` through jax.extend, ``empty2`` and ``closed_call`` through
jax.grad programs)."""

TABLE: list[tuple[str, Case]] = [
    *((f"{family}/{case.id}", case) for family, modules in FAMILIES.items()
      for module in modules for case in module.CASES),
    *((f"tagging/{case.id}", case) for case in TAG_CASES),
]


@functools.cache
def _family_registering(name: str) -> str | None:
    """The rules module that registers primitive ``name``: the module of its rule's function or
    class, or, for the shared zero rule, the module whose source names it (``name_p``/``"name"``).
    """
    higher, spec = lookup_higher_order(name), lookup_vjp(name)
    owner = type(higher) if higher is not None else spec.fn if spec and not spec.zero else None
    if owner is not None:
        package, _, module = owner.__module__.rpartition(".")
        return module if package == rules.__name__ else None
    pattern = re.compile(rf"\b{re.escape(name.replace('-', '_'))}_p\b|\"{re.escape(name)}\"")
    for module in pkgutil.iter_modules(rules.__path__):
        source = inspect.getsource(getattr(rules, module.name))
        if not module.name.startswith("_") and pattern.search(source):
            return module.name
    return None


def test_every_rule_family_has_a_test_file_with_its_cases():
    untested = [family for family, modules in FAMILIES.items() if not modules]
    assert not untested, (
        f"rule families {untested} need a tests/test_rules_<family>.py with CASES"
    )
    for family, modules in FAMILIES.items():
        cases = [case for module in modules for case in module.CASES]
        ids = [case.id for case in cases]
        assert len(ids) == len(set(ids)), f"test_rules_{family}*.py: duplicate Case ids"
        elsewhere = [(case.id, case.primitive, _family_registering(case.primitive))
                     for case in cases if _family_registering(case.primitive) != family]
        assert not elsewhere, (
            f"test_rules_{family}*.py has cases of other families' primitives (id, primitive, "
            f"family): {elsewhere}"
        )


def test_every_supported_primitive_has_a_case():
    supported = fg.supported_primitives()
    covered = {case.primitive for _, case in TABLE}
    missing = sorted(supported - covered - UNREACHABLE.keys())
    where = {name: _family_registering(name) for name in missing}
    assert not missing, "no Case reaches: " + ", ".join(
        f"{name} (add one to CASES in tests/test_rules_{where[name]}.py)" if where[name]
        else f"{name} (add one to CASES in the test_rules_<family>.py of the rules module that "
             "registers it)"
        for name in missing
    ) + "; a primitive no user code can reach with a float gradient goes in UNREACHABLE, with why"
    unknown = sorted(covered - supported)
    assert not unknown, f"Cases name primitives funcgrad has no rule for: {unknown}"
    stale = sorted(UNREACHABLE.keys() & covered | UNREACHABLE.keys() - supported)
    assert not stale, f"UNREACHABLE lists primitives that have a Case or no rule: {stale}"


@pytest.mark.parametrize("case", [case for _, case in TABLE], ids=[name for name, _ in TABLE])
def test_case_matches_jax(case):
    check(case, eager=case.eager, jit=True)
