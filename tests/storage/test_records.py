"""The records' shared fields: written once in storage/records.py, mapped to and from rows by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from storage import GenerationRecord, NewGeneration, StorageError
from storage.models import Generation
from storage.records import COPIED_FROM_PARAMS, GenerationFields

from .conftest import _params

PARAMS: dict[str, Any] = _params(strength=0.5)  # strength: a field no column copies


def test_new_generations_and_records_share_one_list_of_fields() -> None:
    shared = [f.name for f in fields(GenerationFields)]

    assert [f.name for f in fields(NewGeneration)] == shared
    assert [f.name for f in fields(GenerationRecord)][: len(shared)] == shared


def test_every_record_field_but_the_gathered_ones_is_a_column() -> None:
    columns = set(Generation.__table__.columns.keys())

    assert {f.name for f in fields(GenerationRecord)} - columns == {"images", "tags", "boards"}


def test_from_params_copies_the_indexed_fields_by_name() -> None:
    new = NewGeneration.from_params(PARAMS, user="ann", model_revision="main", parent_id=7)

    assert new == NewGeneration(
        user="ann",
        params=PARAMS,
        model_revision="main",
        parent_id=7,
        **{name: PARAMS[name] for name in COPIED_FROM_PARAMS},
    )
    assert set(COPIED_FROM_PARAMS) == set(PARAMS) - {"strength"}
    assert NewGeneration.from_params(PARAMS, user="ann").model_revision is None


def test_from_params_names_the_missing_fields() -> None:
    params = {key: value for key, value in PARAMS.items() if key not in ("seed", "sampler")}

    with pytest.raises(
        StorageError, match=r"^params must hold every indexed field of a generation; missing seed, sampler"
    ):
        NewGeneration.from_params(params, user="ann")
