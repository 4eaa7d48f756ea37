"""Prompt weighting and long prompts on tiny SD1.5 and SDXL pipelines and on the embedded model.

A weight moves the weighted word's vectors the way it says, brackets weigh
down, escaped brackets are words, prompts past the encoder's context are
chunked instead of cut, the negative prompt is weighted the same way, and a
prompt without any of this gives the very embeddings and pixels it gave
before weighting existed.
"""

import logging

import numpy as np
import pytest
import torch

from pipelines import embedded, prompts
from pipelines.engine import Engine
from pipelines.requests import RequestError, Text2ImgRequest
from pipelines.samplers import make_scheduler

# 200 words of the tiny tokenizer's world, a comma every eight: several CLIP contexts long.
LONG = ", ".join(["a red circle on a blue background with"] * 25) + " squares"


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(params=["tiny_sd_folder", "tiny_sdxl_folder"])
def model(request):
    return str(request.getfixturevalue(request.param))


def encode(engine, model, prompt, negative_prompt="", guidance=True):
    loaded = engine.load(model)
    return prompts.encode(loaded.base, loaded.family, prompt, negative_prompt, device=engine.device, guidance=guidance)


def diffusers_encode(engine, model, prompt, negative_prompt="", guidance=True):
    """What the engine did before weighting: diffusers' encode_prompt, an empty negative prompt as None."""
    loaded = engine.load(model)
    negative = negative_prompt or None
    with torch.inference_mode():
        if loaded.family == "sdxl":
            embeds = loaded.base.encode_prompt(
                prompt=prompt,
                device=engine.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guidance,
                negative_prompt=negative,
            )
            names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        else:
            embeds = loaded.base.encode_prompt(prompt, engine.device, 1, guidance, negative)
            names = ("prompt_embeds", "negative_prompt_embeds")
    return dict(zip(names, embeds))


def request(model, **changes):
    fields = {"prompt": "a red circle", "model": model, "width": 64, "height": 64, "num_inference_steps": 3, "seed": 5}
    return Text2ImgRequest(**{**fields, **changes})


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def red_positions(engine, model):
    """Where "red" sits in "red circle": after the start token, one token per piece of the word."""
    tokenizer = engine.load(model).base.tokenizer
    red = tokenizer("red", add_special_tokens=False).input_ids
    assert tokenizer("red circle").input_ids[1 : 1 + len(red)] == red
    return slice(1, 1 + len(red))


def distance(embeds, reference, where):
    return (embeds[0, where].double() - reference[0, where].double()).norm().item()


# -- unweighted prompts: unchanged -------------------------------------------


@pytest.mark.parametrize(("prompt", "negative_prompt"), [("a red circle", "blurry"), ("a red circle", ""), ("", "")])
@pytest.mark.parametrize("guidance", [True, False])
def test_an_unweighted_prompt_gives_exactly_the_embeddings_of_before(engine, model, prompt, negative_prompt, guidance):
    ours = encode(engine, model, prompt, negative_prompt, guidance)
    before = diffusers_encode(engine, model, prompt, negative_prompt, guidance)
    assert ours.keys() == before.keys()
    for name, value in before.items():
        if value is None:
            assert ours[name] is None, name
        else:
            assert torch.equal(ours[name], value), name


def test_an_unweighted_prompt_gives_the_same_pixels_as_before(engine, model):
    asked = request(model, negative_prompt="blurry")
    image = engine.run(asked).images[0]
    # The run as the engine made it before weighting: diffusers' embeddings, same scheduler, same noise.
    loaded = engine.load(model)
    pipe = engine.pipeline(model, "txt2img")
    pipe.scheduler = make_scheduler(asked.sampler, loaded.base.scheduler.config)
    embeds = {
        k: v for k, v in diffusers_encode(engine, model, asked.prompt, asked.negative_prompt).items() if v is not None
    }
    before = pipe(
        **embeds,
        **asked.pipeline_arguments(),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in asked.seeds],
        output_type="pil",
    ).images[0]
    assert np.array_equal(pixels(image), pixels(before))


# -- weights ------------------------------------------------------------------


def test_a_weight_scales_the_word_away_from_the_empty_prompt(engine, model):
    """compel moves a weighted token's vector from the empty prompt's by the weight; the other tokens stay."""
    red = red_positions(engine, model)
    empty = encode(engine, model, "", guidance=False)["prompt_embeds"]
    plain = encode(engine, model, "red circle", guidance=False)["prompt_embeds"]
    up = encode(engine, model, "(red:1.5) circle", guidance=False)["prompt_embeds"]
    down = encode(engine, model, "(red:0.5) circle", guidance=False)["prompt_embeds"]
    assert up.shape == plain.shape == down.shape
    assert not torch.equal(up, plain)
    assert distance(up, empty, red) == pytest.approx(1.5 * distance(plain, empty, red), rel=1e-4)
    assert distance(up, empty, red) > distance(plain, empty, red) > distance(down, empty, red)
    # Neither the brackets nor ":1.5" became tokens: every other vector is where it was.
    after = slice(red.stop, None)
    assert torch.allclose(up[:, after], plain[:, after], atol=1e-6)
    assert torch.allclose(up[:, : red.start], plain[:, : red.start], atol=1e-6)


def test_parentheses_weigh_up_and_square_brackets_down(engine, model):
    red = red_positions(engine, model)

    def embeds(prompt):
        return encode(engine, model, prompt, guidance=False)["prompt_embeds"]

    empty, plain = embeds(""), embeds("red circle")
    assert distance(embeds("(red) circle"), empty, red) == pytest.approx(1.1 * distance(plain, empty, red), rel=1e-4)
    assert distance(embeds("((red)) circle"), empty, red) == pytest.approx(1.21 * distance(plain, empty, red), rel=1e-4)
    # Below 1 compel blends towards the prompt without the word (weight 0):
    # [red] (1/1.1) lies nearer to that than "red" does, and (red:0.5) nearer still.
    without = embeds("(red:0) circle")
    gaps = [(embeds(prompt) - without).norm().item() for prompt in ("red circle", "[red] circle", "(red:0.5) circle")]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_escaped_brackets_are_words(engine, tiny_sd_folder):
    model = str(tiny_sd_folder)
    escaped = encode(engine, model, r"a \(red\) circle", guidance=False)["prompt_embeds"]
    literal = diffusers_encode(engine, model, "a (red) circle", guidance=False)["prompt_embeds"]
    assert torch.allclose(escaped, literal, atol=1e-6)
    weighted = encode(engine, model, "a (red) circle", guidance=False)["prompt_embeds"]
    assert not torch.allclose(weighted, literal, atol=1e-3)


def test_the_negative_prompt_is_weighted_the_same_way(engine, model):
    plain = encode(engine, model, "a circle", "red square")
    weighted = encode(engine, model, "a circle", "(red:1.5) square")
    assert torch.equal(plain["prompt_embeds"], weighted["prompt_embeds"])
    red = red_positions(engine, model)
    empty = encode(engine, model, "", guidance=False)["prompt_embeds"]
    assert distance(weighted["negative_prompt_embeds"], empty, red) == pytest.approx(
        1.5 * distance(plain["negative_prompt_embeds"], empty, red), rel=1e-4
    )
    if engine.load(model).family == "sdxl":
        # The pooled vector is the unweighted words', as in A1111.
        assert torch.allclose(
            weighted["negative_pooled_prompt_embeds"], plain["negative_pooled_prompt_embeds"], atol=1e-6
        )


def test_sdxl_keeps_zeros_for_an_empty_negative_prompt_when_weighted(engine, tiny_sdxl_folder):
    embeds = encode(engine, str(tiny_sdxl_folder), "a (red:1.3) circle", "")
    assert not embeds["negative_prompt_embeds"].any() and not embeds["negative_pooled_prompt_embeds"].any()
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape


def test_weighted_without_guidance_has_no_negative(engine, model):
    embeds = encode(engine, model, "a (red:1.3) circle", "(blurry:1.2)", guidance=False)
    assert embeds["negative_prompt_embeds"] is None
    assert embeds.get("negative_pooled_prompt_embeds") is None


def test_a_negative_weight_is_refused_with_the_field_named(engine, tiny_sd_folder):
    with pytest.raises(RequestError, match=r"negative_prompt weights must be 0 or more; got -1 for 'red'\."):
        encode(engine, str(tiny_sd_folder), "a circle", "(red:-1)")


def test_a_weighted_prompt_changes_the_picture_and_is_a_cache_hit(tiny_sd_folder):
    engine = Engine()
    model = str(tiny_sd_folder)
    weighted = engine.run(request(model, prompt="a (red:1.5) circle")).images[0]
    assert (engine.text_cache.hits, engine.text_cache.misses) == (0, 1)
    again = engine.run(request(model, prompt="a (red:1.5) circle")).images[0]
    assert (engine.text_cache.hits, engine.text_cache.misses) == (1, 1)
    assert np.array_equal(pixels(weighted), pixels(again))
    engine.run(request(model, prompt="a (red:1.3) circle"))
    assert engine.text_cache.misses == 2
    plain = engine.run(request(model, prompt="a red circle")).images[0]
    assert not np.array_equal(pixels(weighted), pixels(plain))
    # The cached embedding gives the same pixels as encoding afresh.
    engine.text_cache.clear()
    fresh = engine.run(request(model, prompt="a (red:1.5) circle")).images[0]
    assert np.array_equal(pixels(weighted), pixels(fresh))


# -- long prompts ---------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_warnings():
    # diffusers' loggers do not propagate to the root logger, so caplog cannot see them.
    handler = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_a_long_prompt_is_chunked_not_truncated(engine, model, diffusers_warnings):
    assert len(LONG.split()) >= 200
    tokenizer = engine.load(model).base.tokenizer
    assert len(tokenizer(LONG, verbose=False).input_ids) > 2 * 77
    embeds = encode(engine, model, LONG, "blurry")
    length = embeds["prompt_embeds"].shape[1]
    assert length > 2 * 77 and length % 77 == 0
    assert embeds["negative_prompt_embeds"].shape == embeds["prompt_embeds"].shape  # padded to the same length
    # The last word reaches the embedding: nothing was cut.
    other = encode(engine, model, LONG.removesuffix("squares") + "triangles", "blurry")["prompt_embeds"]
    assert other.shape[1] == length and not torch.equal(other[:, -77:], embeds["prompt_embeds"][:, -77:])
    result = engine.run(request(model, prompt=LONG, negative_prompt="(blurry:1.2)"))
    assert result.images[0].size == (64, 64)
    assert not [message for message in diffusers_warnings if "truncated" in message]
    # The check above can fail: diffusers' own path cuts the prompt and says so.
    diffusers_encode(engine, model, LONG)
    assert [message for message in diffusers_warnings if "truncated" in message]


def test_a_long_negative_prompt_pads_the_prompt(engine, model):
    embeds = encode(engine, model, "a red circle", LONG)
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape
    assert embeds["prompt_embeds"].shape[1] > 77


def test_break_starts_a_new_chunk(engine, tiny_sd_folder):
    model = str(tiny_sd_folder)
    embeds = encode(engine, model, "a red circle BREAK blue background", guidance=False)["prompt_embeds"]
    assert embeds.shape[1] == 2 * 77
    second = diffusers_encode(engine, model, "blue background", guidance=False)["prompt_embeds"]
    assert torch.allclose(embeds[:, 77:], second, atol=1e-6)


# -- the embedded model: its own tokenizer, 24 tokens --------------------------


@pytest.mark.parametrize(
    "prompt", ["a (red:1.4) circle on a blue background", "a ((red)) circle on a [blue] background"]
)
def test_the_embedded_model_draws_a_weighted_prompt(engine, prompt, read_drawing):
    for seed in (1, 2, 3):
        reading = read_drawing(engine, prompt, seed)
        assert (reading.background, reading.colour, reading.shape) == ("blue", "red", "circle"), seed


def test_the_embedded_model_drops_a_word_weighted_zero(engine, read_drawing):
    for seed in (1, 2, 3):
        assert read_drawing(engine, "a (red:0) circle on a blue background", seed).colour != "red", seed


def test_the_embedded_model_chunks_at_its_own_length(engine):
    pipe = engine.load("embedded").base
    assert pipe.tokenizer.model_max_length == embedded.MAX_TOKENS == 24
    short = prompts.encode(pipe, "sd", "a (red:1.4) circle", "", device=engine.device, guidance=True)
    assert short["prompt_embeds"].shape[1] == 24
    long = "a red circle on a blue background, " * 6
    assert len(pipe.tokenizer(long, verbose=False).input_ids) > 2 * 24
    embeds = prompts.encode(pipe, "sd", long, "", device=engine.device, guidance=True)
    length = embeds["prompt_embeds"].shape[1]
    assert length > 2 * 24 and length % 24 == 0
    assert embeds["negative_prompt_embeds"].shape[1] == length
    defaults = embedded.defaults()
    image = engine.run(
        Text2ImgRequest(prompt=long, width=defaults["width"], height=defaults["height"], num_inference_steps=2)
    ).images[0]
    assert image.size == (64, 64)
