"""`frozen.fast_init`: the records made for every request keep the dataclass's signature,
frozenness, equality and hash."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from batchrunner.frozen import fast_init
from batchrunner.pricing import Cost
from batchrunner.records import Attempt, Result
from batchrunner.render import Request


def plain_twin(cls: type) -> Any:
    """The same fields as an ordinary frozen, slotted dataclass (the generated __init__)."""
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING else None)
        for f in dataclasses.fields(cls)
    ]
    spec = [(n, t) if d is None else (n, t, d) for n, t, d in fields]
    return dataclasses.make_dataclass(f"Plain{cls.__name__}", spec, frozen=True, slots=True)


@pytest.mark.parametrize("cls", [Result, Attempt, Request, Cost])
def test_fast_init_keeps_the_dataclass_contract(cls: type) -> None:
    twin = plain_twin(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(twin))
    required = [p for p in inspect.signature(cls).parameters.values() if p.default is inspect.Parameter.empty]
    values = {p.name: f"v{i}" for i, p in enumerate(required)}
    made, expected = cls(**values), twin(**values)
    assert dataclasses.astuple(made) == dataclasses.astuple(expected)
    assert made == cls(*values.values()) and hash(made) == hash(cls(**values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__(required[0].name, "changed")
    with pytest.raises(TypeError):
        cls(**values, not_a_field=1)
    with pytest.raises(TypeError):
        cls()


def test_fast_init_refuses_what_it_does_not_handle() -> None:
    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    for cls in (Mutable, Factory):
        with pytest.raises(TypeError):
            fast_init(cls)
