"""64-bit seeds in the gallery, on SQLite and PostgreSQL (issue 19).

Both keep integers in a signed 64-bit column; a seed from 2**63 up must still
come back as itself, in the record, its images, its params and the PNG's
parameters, and the rows older code wrote must read as they always did.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from PIL import Image
from sqlalchemy import text

from storage import Gallery, ImageInput, NewGeneration, StorageError
from storage.pngmeta import a1111_parameters, read_png_metadata

SEEDS = [0, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_64_bit_seed_round_trips(
    any_gallery: Gallery, new_generation: Callable[..., NewGeneration], seed: int
) -> None:
    started = any_gallery.start(new_generation(seed=seed, batch_size=1))
    finished = any_gallery.finish(
        started.id,
        images=[ImageInput("output", Image.new("RGB", (64, 64), "red"), seed=seed)],
        environment={},
        timings={},
        duration_ms=1,
    )
    again = any_gallery.get(started.id)
    assert again == finished
    assert (again.seed, again.params["seed"], again.outputs[0].seed) == (seed, seed, seed)
    chunks = read_png_metadata(any_gallery.path(again.outputs[0].path))
    assert f"Seed: {seed}," in chunks["parameters"]
    assert json.loads(chunks["atelier"])["image_seed"] == seed


def test_seeds_below_2_to_the_63_are_stored_as_they_always_were(
    any_gallery: Gallery, new_generation: Callable[..., NewGeneration]
) -> None:
    small = any_gallery.start(new_generation(seed=2**32 - 1))
    big = any_gallery.start(new_generation(seed=2**64 - 1))
    with any_gallery._engine.connect() as connection:
        raw = dict(connection.execute(text("SELECT id, seed FROM generations")).all())
        # What older code wrote (a plain BIGINT) reads back as the same seed.
        connection.execute(text("UPDATE generations SET seed = 4294967295 WHERE id = :id"), {"id": big.id})
        connection.commit()
    assert raw == {small.id: 2**32 - 1, big.id: -1}  # the big seed's two's-complement bits
    assert any_gallery.get(big.id).seed == 2**32 - 1


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_seeds_outside_64_bits_are_refused(
    any_gallery: Gallery, new_generation: Callable[..., NewGeneration], seed: object
) -> None:
    with pytest.raises(StorageError, match=r"seed must be between 0 and 18446744073709551615"):
        any_gallery.start(new_generation(seed=seed))


def test_variation_seed_in_parameters_counts_on_like_the_batch() -> None:
    params = {
        "prompt": "p", "num_inference_steps": 4, "sampler": "Euler", "guidance_scale": 7.0, "width": 64,
        "height": 64, "model": "embedded", "seed": 2**32 - 1, "variation_seed": 2**64 - 1,
        "variation_strength": 0.5,
    }  # fmt: skip
    # Image 1 of the batch: seed 2**32 - 1 wrapped to 0 (32-bit, as before); its variation seed wraps at 2**64.
    assert "Seed: 0, " in a1111_parameters(params, seed=0)
    assert "Variation seed: 0, " in a1111_parameters(params, seed=0)
    assert f"Variation seed: {2**64 - 1}, " in a1111_parameters(params, seed=2**32 - 1)
