"""The field table and the method configs agree in both directions."""

import dataclasses

import pytest

from attnkit.methods import REGISTRY
from attnkit.methods.fields import FIELDS, fields_for

KINDS = {"bool", "int", "float", "choice", "words", "indices", "window", "windows", "grid", "thresholds", "masks"}


@pytest.mark.parametrize("method_id", sorted(REGISTRY))
def test_every_config_field_has_a_row_and_back(method_id):
    config = REGISTRY[method_id].config_class
    names = [f.name for f in dataclasses.fields(config)]
    rows = fields_for(method_id)
    assert [r.name for r in rows] == names
    for f, row in zip(dataclasses.fields(config), rows):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert row.default == default, f"{method_id}.{f.name}: table says {row.default!r}, config {default!r}"


def test_rows_are_well_formed():
    assert {f.method for f in FIELDS} == set(REGISTRY)
    keys = [f.key for f in FIELDS]
    assert len(keys) == len(set(keys))
    for f in FIELDS:
        assert f.kind in KINDS, f
        assert f.label and f.help
        if f.kind in ("int", "float"):
            assert f.minimum is not None and f.maximum is not None and f.minimum <= f.default <= f.maximum
        if f.kind == "choice":
            assert f.default in f.choices
