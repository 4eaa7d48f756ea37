"""A1111 names onto Atelier's, without a server: samplers and schedules, LoRA tags, model titles. No model runs."""

from __future__ import annotations

import pytest

from pipelines.limits import RequestError
from pipelines.samplers import SAMPLER_NAMES
from webui.models import ModelEntry
from webui.sdapi.mapping import a1111_message, atelier_sampler, find_model, prompt_loras


@pytest.mark.parametrize(
    ("sampler", "scheduler", "expected"),
    [
        ("Euler a", "automatic", "Euler a"),
        ("Euler a", None, "Euler a"),
        ("Euler", "Uniform", "Euler"),
        # A1111 runs DPM++ 2M on Karras sigmas under "Automatic" (sd_samplers_kdiffusion.py).
        ("DPM++ 2M", "automatic", "DPM++ 2M Karras"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M", "uniform", "DPM++ 2M"),
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # before v1.9 the schedule was part of the name
        ("DPM++ 2M Karras", "karras", "DPM++ 2M Karras"),
        (None, "automatic", "UniPC"),  # the model's default
    ],
)
def test_samplers_map_by_name_and_schedule(sampler, scheduler, expected) -> None:
    assert atelier_sampler(sampler, scheduler, default="UniPC") == expected


def test_every_atelier_sampler_is_reachable_by_its_own_name() -> None:
    for name in SAMPLER_NAMES:
        assert atelier_sampler(name, "uniform", default="Euler") == name


@pytest.mark.parametrize(
    ("sampler", "scheduler", "field"),
    [("Heun++ 9", None, "sampler_name"), ("Euler a", "karras", "scheduler"), ("DPM++ 2M", "beta", "scheduler")],
)
def test_what_atelier_lacks_is_refused_naming_the_field(sampler, scheduler, field) -> None:
    with pytest.raises(RequestError, match=rf"^{field}"):
        atelier_sampler(sampler, scheduler, default="Euler")


def test_lora_tags_leave_the_prompt_and_become_loras() -> None:
    prompt, loras, notes = prompt_loras("a cat, <lora:house-style:0.7>, <LORA:ink>, at night", apply=True)
    assert prompt == "a cat, at night"
    assert loras == [("house-style", 0.7), ("ink", 1.0)]
    assert notes == {}
    _, loras, notes = prompt_loras("a cat <lora:ink:0.5:0.2>", apply=True)
    assert loras == [("ink", 0.5)] and list(notes) == ["prompt <lora:ink:0.5:0.2>"]
    prompt, loras, notes = prompt_loras("a cat <lora:ink:0.5>", apply=False)
    assert (prompt, loras, list(notes)) == ("a cat", [], ["disable_extra_networks"])
    with pytest.raises(RequestError, match="weight"):
        prompt_loras("<lora:ink:heavy>", apply=True)


def test_model_titles_match_with_or_without_a1111_hash_and_extension() -> None:
    entry = ModelEntry("dreamy", "/models/dreamy.safetensors", "sd", "Euler", 20, 512, 512, 7.0)
    models = [entry]
    for title in ("dreamy", "dreamy [6ce0161689]", "dreamy.safetensors [6ce0161689]", "/models/dreamy.safetensors"):
        assert find_model(models, title, "sd_model_checkpoint") is entry
    with pytest.raises(RequestError, match="^sd_model_checkpoint must be one of dreamy"):
        find_model(models, "other", "sd_model_checkpoint")


def test_messages_name_the_field_as_the_client_sent_it() -> None:
    assert a1111_message("num_inference_steps must be ...") == "steps must be ..."
    assert a1111_message("guidance_scale must be ...") == "cfg_scale must be ..."
    assert a1111_message("prompt must not be empty.") == "prompt must not be empty."
