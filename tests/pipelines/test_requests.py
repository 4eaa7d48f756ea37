import json

import pytest

from pipelines.requests import MAX_SEED, RequestError, Text2ImgRequest, random_seed, request_from_dict
from pipelines.samplers import SAMPLER_NAMES


def make(**changes):
    return Text2ImgRequest(**{"prompt": "a red circle on a blue background", **changes})


def test_round_trip_through_json_is_exact():
    request = make(negative_prompt="blurry", seed=MAX_SEED, guidance_scale=7, sampler="Euler a", batch_size=3)
    data = json.loads(json.dumps(request.to_dict()))
    again = request_from_dict(data)
    assert again == request
    assert again.to_dict() == request.to_dict()
    assert data["task"] == "txt2img"
    assert isinstance(again.guidance_scale, float)


def test_fields_use_diffusers_argument_names():
    assert set(make().to_dict()) == {
        "task",
        "prompt",
        "negative_prompt",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "width",
        "height",
        "sampler",
        "batch_size",
        "model",
        "variation_seed",
        "variation_strength",
        "ip_adapter_image",
        "ip_adapter_scale",
        "loras",
        "refiner",
        "refiner_switch",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": "   "}, "prompt must not be empty."),
        ({"width": 100}, "width must be a multiple of 8 from 64 to 2048; got 100."),
        ({"height": 4096}, "height must be a multiple of 8 from 64 to 2048; got 4096."),
        ({"num_inference_steps": 0}, "num_inference_steps must be a whole number from 1 to 150; got 0."),
        ({"num_inference_steps": 151}, "num_inference_steps must be a whole number from 1 to 150; got 151."),
        ({"guidance_scale": 30.5}, "guidance_scale must be a number from 0 to 30; got 30.5."),
        ({"seed": -1}, "seed must be a whole number from 0 to 18446744073709551615; got -1."),
        ({"seed": 2**64}, "seed must be a whole number from 0 to 18446744073709551615; got 18446744073709551616."),
        ({"seed": True}, "seed must be a whole number from 0 to 18446744073709551615; got True."),
        ({"seed": 2.0**40}, "seed must be a whole number from 0 to 18446744073709551615; got 1099511627776.0."),
        ({"batch_size": 0}, "batch_size must be a whole number from 1 to 16; got 0."),
    ],
)
def test_bad_input_is_one_sentence_naming_the_field(changes, message):
    with pytest.raises(RequestError) as raised:
        make(**changes)
    assert str(raised.value) == message


def test_unknown_sampler_lists_the_allowed_ones():
    with pytest.raises(
        RequestError, match="sampler must be one of DPM\\+\\+ 2M, .*LCM, .*DPM2 a Karras, .*; got 'k_lms'"
    ):
        make(sampler="k_lms")


def test_every_advertised_sampler_is_accepted():
    for name in ("DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a", "DDIM", "UniPC", "LCM"):
        assert name in SAMPLER_NAMES
        assert make(sampler=name).sampler == name


def test_from_dict_names_unknown_fields_and_tasks():
    with pytest.raises(RequestError, match="has no field strength"):
        Text2ImgRequest.from_dict({**make().to_dict(), "strength": 0.5})
    with pytest.raises(RequestError, match="task must be one of txt2img, img2img, inpaint, controlnet; got 'paint'"):
        request_from_dict({**make().to_dict(), "task": "paint"})


def test_batch_seeds_count_up_and_wrap():
    assert make(seed=7, batch_size=3).seeds == [7, 8, 9]
    assert make(seed=MAX_SEED, batch_size=2).seeds == [MAX_SEED, 0]


def test_seeds_are_64_bit_and_a_32_bit_seed_counts_on_as_it_always_did():
    # ComfyUI's and Fooocus's seeds (issue 19): the whole 64-bit range, exactly, through JSON.
    request = make(seed=MAX_SEED, variation_seed=2**63, variation_strength=0.5, batch_size=2)
    assert MAX_SEED == 2**64 - 1
    again = request_from_dict(json.loads(json.dumps(request.to_dict())))
    assert (again.seed, again.variation_seed) == (2**64 - 1, 2**63)
    assert again.variation_seeds == [2**63, 2**63 + 1]
    # A batch from a seed below 2**32 wraps at 2**32, as records made before 64-bit seeds did.
    assert make(seed=2**32 - 1, batch_size=2).seeds == [2**32 - 1, 0]
    assert make(seed=2**32, batch_size=2).seeds == [2**32, 2**32 + 1]
    assert make(seed=2**32 - 2, variation_seed=2**32 - 1, variation_strength=0.1, batch_size=2).variation_seeds == [
        2**32 - 1,
        0,
    ]


def test_random_seeds_stay_below_2_to_the_32():
    # torch's CPU generator keys its noise on a seed's low 32 bits: a wider draw makes no new image.
    assert all(0 <= random_seed() < 2**32 for _ in range(200))


def test_requests_are_frozen():
    with pytest.raises(AttributeError):
        make().seed = 3
