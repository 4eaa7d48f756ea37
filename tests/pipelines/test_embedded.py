"""The embedded model and its world: drawn scenes read back right, prompts followed."""

import numpy as np
import pytest

from pipelines import embedded
from pipelines.embedded.world import caption, classify, parse_prompt, render, sample_scene
from pipelines.engine import Engine


def test_the_classifier_reads_every_rendered_scene_right():
    rng = np.random.default_rng(7)
    for _ in range(300):
        scene = sample_scene(rng)
        reading = classify(render(scene))
        assert (reading.background, reading.colour, reading.shape) == (scene.background, scene.colour, scene.shape)
        assert abs(reading.centre[0] - scene.cx) < 0.05 and abs(reading.centre[1] - scene.cy) < 0.05


def test_captions_name_the_scene_and_parse_back():
    rng = np.random.default_rng(8)
    for _ in range(300):
        scene = sample_scene(rng)
        text = caption(scene, rng)
        assert parse_prompt(text) == (scene.shape, scene.colour, scene.background), text


def test_the_shipped_tokenizer_is_the_one_training_builds():
    """Training builds the tokenizer in code; the studio loads the saved one. They must agree."""
    from transformers import CLIPTokenizer

    built = embedded.make_tokenizer()
    shipped = CLIPTokenizer.from_pretrained(embedded.FOLDER / "tokenizer")
    rng = np.random.default_rng(9)
    for _ in range(200):
        text = caption(sample_scene(rng), rng)
        assert built(text).input_ids == shipped(text).input_ids, text
    # Most world words are one token; any other text still tokenizes, byte by byte.
    single = [word for word in embedded.WORDS if len(built.tokenize(word)) == 1]
    assert {"red", "blue", "circle", "square", "background"} <= set(single)
    assert len(built("a zebra!").input_ids) > 3


@pytest.fixture(scope="module")
def engine():
    return Engine()


def test_the_background_follows_the_prompt(engine, read_drawing):
    """Same seed, same shape; only the background word changes, and so does the picture."""
    asked = ["blue", "yellow", "black", "green"]
    readings = [read_drawing(engine, f"a white circle on a {background} background", seed=11) for background in asked]
    assert [reading.background for reading in readings] == asked


def test_the_shape_and_its_colour_follow_the_prompt(engine, read_drawing):
    """The model reads 96 of 96 evaluation pairs right; here nine prompts, three seeds each."""
    asked = [(colour, shape) for colour, shape in (("red", "square"), ("yellow", "circle"), ("white", "triangle"))]
    for colour, shape in asked:
        for seed in (5, 6, 7):
            reading = read_drawing(engine, f"a {colour} {shape} on a blue background", seed=seed)
            assert (reading.background, reading.colour, reading.shape) == ("blue", colour, shape), (colour, shape, seed)
