"""The README says what the code does: its rule example is the real rule, its numbers are true."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import funcgrad as fg
from funcgrad.interpret.registry import lookup_vjp

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_rule_example_is_copied_from_the_rule():
    section = README[README.index("## How the interpreter works"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name = re.search(r"def (\w+)\(", example).group(1)
    primitive = re.search(r"@vjp_rule\(lax\.(\w+)_p\)", example).group(1)
    rule = lookup_vjp(primitive).fn
    assert rule.__name__ == name
    source = inspect.getsource(inspect.getmodule(rule))
    assert example in source, "the README's rule example differs from the rule in the source"


def test_the_number_of_rules_is_the_registrys():
    stated = {int(n) for n in re.findall(r"\((\d+) of them|lists every primitive with a rule "
                                         r"\((\d+) in", README) for n in n if n}
    assert stated == {len(fg.supported_primitives())}
