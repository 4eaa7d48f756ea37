"""Property-based, over every request type: whatever a client (or a stored
record) hands in, the result is a valid request that round-trips exactly
through JSON, images and all, or one RequestError sentence naming the field.

tests/pipelines/test_requests_properties.py covers Text2ImgRequest's plain
fields; this covers the rest: image fields given junk, masks of other sizes
and modes, ControlUnit fields, LoRAs, variations and the IP-Adapter.
"""

import dataclasses
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines import preprocessors
from pipelines.requests import (
    MASK_SOURCES,
    MAX_SEED,
    REQUEST_TYPES,
    RESIZE_MODES,
    ControlNetRequest,
    ControlUnit,
    ImageRef,
    Img2ImgRequest,
    InpaintRequest,
    RequestError,
    Text2ImgRequest,
    request_from_dict,
)
from pipelines.samplers import SAMPLER_NAMES

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- what a message may start with ---------------------------------------------------

UNIT_FIELDS = [f.name for f in dataclasses.fields(ControlUnit)]
PARAMETERS = sorted({key for entry in preprocessors.PREPROCESSORS.values() for key in entry.params})
# Names a refusal of a nested value starts with. A ControlUnit speaks diffusers'
# argument names ("controlnet_conditioning_scale") and calls its image "control
# image"; a preprocessor parameter is named by itself or by its preprocessor
# ("low_threshold for canny must ...", "canny has no parameter ..."); a LoRA
# weight by its LoRA ("the weight of LoRA 'style' must ...", pipelines/lora.py).
NESTED = [
    "control image",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
    *PARAMETERS,
    *preprocessors.PREPROCESSORS,
    "the weight of LoRA",
]
# What from_dict says about the stored shape itself: the task, or an unknown key of a type.
STORED = ["task", *(cls.__name__ for cls in REQUEST_TYPES.values()), "a control has no field", "controls"]


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)] + UNIT_FIELDS + NESTED


def assert_one_sentence_naming_a_field(error: RequestError, names: list[str]) -> None:
    message = str(error)
    assert type(error).__name__ in ("RequestError", "LoraError"), type(error)
    assert message.endswith("."), message
    assert "\n" not in message and "\r" not in message, message
    assert any(message.startswith(f"{name} ") for name in names), message


# -- values: plausible, at the edges, and junk ---------------------------------------------


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


# A small pool of real inputs, hashed once: photos, and masks of the photos' size
# and of other sizes and modes (the inpaint check must refuse the wrong ones).
PHOTOS = [
    ImageRef.of(_image("RGB", (16, 16), 1)),
    ImageRef.of(_image("RGB", (24, 16), 2)),
    ImageRef.of(_image("RGBA", (16, 16), 3)),
]
MASKS = [
    ImageRef.of(_image("L", (16, 16), 4)),
    ImageRef.of(_image("L", (24, 16), 5)),
    ImageRef.of(_image("RGB", (16, 16), 6)),
    ImageRef.of(_image("1", (16, 16), 7)),
    ImageRef.of(_image("L", (8, 8), 8)),
]
IMAGES = {ref.sha256: ref.image for ref in PHOTOS + MASKS}
# A stored reference without its pixels: what a request read back without the gallery holds.
HASH_ONLY = ImageRef("ab" * 32)

text = st.text(max_size=30)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400)]),  # JSON whole numbers past float's range
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.just("ab" * 32),  # looks like a stored pixel hash
    st.just(_image("RGB", (16, 16), 1)),  # a picture, but not an ImageRef
    st.lists(st.integers(), max_size=3),  # unhashable, too
    st.dictionaries(text, st.integers(), max_size=2),
)
photo = st.sampled_from(PHOTOS)
fraction = st.floats(min_value=0, max_value=1)
seed = st.integers(min_value=0, max_value=MAX_SEED)
prompt = st.one_of(
    st.text(min_size=1, max_size=40).filter(str.strip),
    st.sampled_from(
        [
            "a red circle",
            "a red circle\na blue square",
            "\x00\x1b[31m\u202e",
            "<b>x</b>",
            "'; DROP TABLE generations; --",
            "\ud800 a lone surrogate",
        ]
    ),
    st.integers(min_value=9_990, max_value=10_000).map(lambda n: "x" * n),
)

# Each field: values a client plausibly sends (mostly valid), then what a
# hostile or careless one sends instead (the edges just outside, and junk).
COMMON = {
    "prompt": (prompt, st.one_of(st.sampled_from(["", "   ", "\n"]), st.just("x" * 10_001), junk)),
    "negative_prompt": (st.one_of(st.just(""), prompt), st.one_of(st.just("x" * 10_001), junk)),
    "seed": (seed, st.one_of(st.sampled_from([-1, MAX_SEED + 1, 2**64]), junk)),
    "num_inference_steps": (st.integers(1, 150), st.one_of(st.sampled_from([0, 151, 2.0]), junk)),
    "guidance_scale": (
        st.one_of(st.floats(0, 30), st.integers(0, 30)),
        st.one_of(st.sampled_from([-0.1, 30.01, float("nan"), float("inf")]), junk),
    ),
    "width": (st.sampled_from([64, 72, 512, 2048]), st.one_of(st.sampled_from([56, 100, 2056, -64, 512.0]), junk)),
    "height": (st.sampled_from([64, 72, 512, 2048]), st.one_of(st.sampled_from([56, 100, 2056, -64, 512.0]), junk)),
    "sampler": (st.sampled_from(SAMPLER_NAMES), st.one_of(st.sampled_from(["k_lms", "euler"]), junk)),
    "batch_size": (st.integers(1, 16), st.one_of(st.sampled_from([0, 17, 1.0]), junk)),
    "model": (
        st.sampled_from(["embedded", "org/stable-diffusion-v1-5", "/models/x.safetensors"]),
        st.one_of(st.sampled_from(["", "  "]), junk),
    ),
    "variation_seed": (st.one_of(st.none(), seed), st.one_of(st.sampled_from([-1, MAX_SEED + 1]), junk)),
    "variation_strength": (
        st.one_of(st.just(0.0), fraction),
        st.one_of(st.sampled_from([-0.01, 1.01, float("nan")]), junk),
    ),
    "ip_adapter_image": (st.one_of(st.none(), photo, st.just(HASH_ONLY)), junk),
    "ip_adapter_scale": (st.floats(0, 2), st.one_of(st.sampled_from([-0.1, 2.1, float("inf")]), junk)),
    "refiner": (
        st.one_of(st.none(), st.sampled_from(["org/some-refiner", "/m/r.safetensors"])),
        st.one_of(st.sampled_from(["", "  ", "x" * 10_001]), junk),
    ),
    "refiner_switch": (st.floats(0.01, 0.99), st.one_of(st.sampled_from([0, 1, 1.0, -0.5, float("nan")]), junk)),
    "loras": (
        st.lists(
            st.tuples(st.sampled_from(["style", "texture", "a b", "..", "ünï"]), st.floats(-2, 2)),
            max_size=8,
            unique_by=lambda pair: pair[0],
        ),
        st.one_of(
            st.lists(
                st.tuples(st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"]), st.just(1.0)),
                min_size=9,
                max_size=9,
                unique_by=lambda pair: pair[0],
            ),  # one too many
            st.just([("style", 1.0), ("style", 0.5)]),  # the same LoRA twice
            st.lists(
                st.tuples(st.one_of(st.just("style"), junk), st.one_of(st.floats(-2, 2), junk)), min_size=1, max_size=2
            ),
            st.lists(st.lists(st.just("style"), max_size=3), min_size=1, max_size=2),  # not pairs
            junk,
        ),
    ),
}
IMAGE_JUNK = st.one_of(st.sampled_from([None, "ab" * 32, b"\x89PNG"]), junk)
TASK_FIELDS = {
    Text2ImgRequest: {},
    Img2ImgRequest: {
        "image": (photo, IMAGE_JUNK),
        "strength": (st.floats(0.01, 1), st.one_of(st.sampled_from([0, 0.0, 1.01, -1]), junk)),
        "resize_mode": (st.sampled_from(RESIZE_MODES), st.one_of(st.sampled_from(["Fit", "stretch"]), junk)),
        # 0 x 0: the image's own size; a size given is kept.
        "width": (st.sampled_from([0, 64, 512]), st.one_of(st.sampled_from([56, 2056]), junk)),
        "height": (st.sampled_from([0, 64, 512]), st.one_of(st.sampled_from([56, 2056]), junk)),
    },
    InpaintRequest: {
        "image": (photo, IMAGE_JUNK),
        # Masks of the photo's size and others', greyscale and not.
        "mask_image": (st.sampled_from(MASKS), IMAGE_JUNK),
        "strength": (st.floats(0.01, 1), st.one_of(st.sampled_from([0, 1.01]), junk)),
        "mask_grow": (st.integers(-256, 256), st.one_of(st.sampled_from([-257, 257]), junk)),
        "mask_feather": (st.integers(0, 256), st.one_of(st.sampled_from([-1, 257]), junk)),
        "padding_mask_crop": (st.one_of(st.none(), st.integers(0, 2048)), st.one_of(st.sampled_from([-1, 2049]), junk)),
        "mask_source": (st.sampled_from(MASK_SOURCES), st.one_of(st.just("magic"), junk)),
        "width": (st.sampled_from([0, 64]), st.one_of(st.just(60), junk)),
        "height": (st.sampled_from([0, 64]), st.one_of(st.just(60), junk)),
    },
    ControlNetRequest: {
        "image": (st.one_of(st.none(), photo), IMAGE_JUNK),
        "mask_image": (st.one_of(st.none(), st.sampled_from(MASKS)), IMAGE_JUNK),
        "strength": (st.floats(0.01, 1), st.one_of(st.sampled_from([0, 1.01]), junk)),
        "resize_mode": (st.sampled_from(RESIZE_MODES), junk),
        "width": (st.sampled_from([0, 64]), st.one_of(st.just(60), junk)),
        "height": (st.sampled_from([0, 64]), st.one_of(st.just(60), junk)),
    },
}


def _param_value(spec):
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "int":
        return st.one_of(st.integers(spec.min, spec.max), st.integers(spec.min, spec.max).map(float))
    return st.floats(spec.min, spec.max)


class UnitFields(dict):
    """A ControlUnit's keyword arguments, built into one by `construct` (a plain dict in controls is junk)."""


@st.composite
def unit_fields(draw) -> UnitFields:
    """One ControlNet's fields: plausible, then up to two of them (or a parameter) replaced by junk."""
    name = draw(st.sampled_from(sorted(preprocessors.PREPROCESSORS)))
    specs = preprocessors.PREPROCESSORS[name].params
    start = draw(st.floats(0, 0.9))
    fields = {
        "image": draw(photo),
        "controlnet": draw(st.sampled_from(["embedded-canny", "sd15-canny", "org/some-controlnet-depth"])),
        "preprocessor": name,
        "preprocessor_params": draw(st.fixed_dictionaries({}, optional={k: _param_value(v) for k, v in specs.items()})),
        "conditioning_scale": draw(st.floats(0, 2)),
        "guidance_start": start,
        "guidance_end": draw(st.floats(start + 0.05, 1)),
    }
    for key in draw(st.lists(st.sampled_from([*fields, "a parameter"]), max_size=2, unique=True)):
        if key == "a parameter":
            param = draw(st.one_of(st.sampled_from(sorted(specs) or ["low_threshold"]), text, st.integers()))
            params = fields["preprocessor_params"]
            fields["preprocessor_params"] = {
                **(params if isinstance(params, dict) else {}),
                param: draw(st.one_of(st.sampled_from([-1, 256, 2**80, 10**400, 1.5, float("nan"), True]), junk)),
            }
        elif key == "image":
            fields[key] = draw(IMAGE_JUNK)
        elif key in ("guidance_start", "guidance_end"):
            fields[key] = draw(st.one_of(st.sampled_from([-0.1, 1.1, 0.5, 0.0, 1.0]), junk))
        else:
            fields[key] = draw(st.one_of(st.sampled_from(["", " ", "Canny", -1, 2.5]), junk))
    return UnitFields(fields)


@st.composite
def request_fields(draw, cls) -> dict:
    """A request's fields: plausible values for some (defaults for the rest), then up to two replaced by junk."""
    spec = {**COMMON, **TASK_FIELDS[cls]}
    required = {
        "prompt",
        *(name for name in ("image", "mask_image") if name in TASK_FIELDS[cls] and cls is not ControlNetRequest),
    }
    fields = {name: draw(spec[name][0]) for name in sorted(required)}
    for name in draw(st.lists(st.sampled_from(sorted(set(spec) - required)), max_size=6, unique=True)):
        fields[name] = draw(spec[name][0])
    if cls is ControlNetRequest:
        fields["controls"] = [draw(unit_fields()) for _ in range(draw(st.integers(1, 3)))]
    for name in draw(
        st.lists(
            st.sampled_from(sorted(spec) + (["controls"] if cls is ControlNetRequest else [])), max_size=2, unique=True
        )
    ):
        if name == "controls":
            fields[name] = draw(
                st.one_of(
                    st.just([]),
                    st.lists(unit_fields(), min_size=4, max_size=4),
                    st.lists(junk, min_size=1, max_size=2),
                    junk,
                )
            )
        else:
            fields[name] = draw(spec[name][1])
    return fields


# -- the properties ---------------------------------------------------------------------------


def construct(cls, fields: dict):
    """The request, or None after checking the refusal; any other exception fails the test."""
    names = field_names(cls)
    if cls is ControlNetRequest and isinstance(fields.get("controls"), list):
        units = []
        for unit in fields["controls"]:
            if not isinstance(unit, UnitFields):
                units.append(unit)
                continue
            try:
                units.append(ControlUnit(**unit))
            except RequestError as error:
                assert_one_sentence_naming_a_field(error, names)
                return None
        fields = {**fields, "controls": units}
    try:
        return cls(**fields)
    except RequestError as error:
        assert_one_sentence_naming_a_field(error, names)
        return None


def assert_round_trips(request) -> None:
    """to_dict -> JSON -> request_from_dict gives the same request, with the stored pixels handed back."""
    refs = [ref for _, ref in request.input_images]
    stored = json.loads(json.dumps(request.to_dict(), allow_nan=False))
    assert stored["task"] == request.task
    if all(ref.image is not None for ref in refs):
        images = {ref.sha256: ref.image for ref in refs}
        again = request_from_dict(stored, images)
        assert type(again) is type(request)
        assert again == request and again.to_dict() == request.to_dict()
        # The inputs come back as the gallery's pixels, not just their hashes.
        assert [ref.image for _, ref in again.input_images] == [images[ref.sha256] for ref in refs]
    # Without the gallery's pixels a request still reads back, as hashes.
    bare = request_from_dict(json.loads(json.dumps(request.to_dict())))
    assert type(bare) is type(request)
    assert bare == request and bare.to_dict() == request.to_dict()


@BOUNDED
@given(request_fields(Text2ImgRequest))
def test_text_to_image_with_images_loras_and_variations(fields):
    request = construct(Text2ImgRequest, fields)
    if request is not None:
        assert_round_trips(request)


@BOUNDED
@given(request_fields(Img2ImgRequest))
def test_image_to_image(fields):
    request = construct(Img2ImgRequest, fields)
    if request is not None:
        assert request.width % 8 == 0 and request.height % 8 == 0 and request.width >= 64
        assert_round_trips(request)


@BOUNDED
@given(request_fields(InpaintRequest))
def test_inpaint_masks_of_every_size_and_mode(fields):
    request = construct(InpaintRequest, fields)
    if request is None:
        return
    image, mask = request.image.image, request.mask_image.image
    if image is not None and mask is not None:
        # Only a greyscale mask of the photo's own size gets through.
        assert mask.mode == "L" and mask.size == image.size
    assert 1 <= len(request.prompts) * request.batch_size <= 16
    assert_round_trips(request)


@BOUNDED
@given(request_fields(ControlNetRequest))
def test_controlnet_and_its_units(fields):
    request = construct(ControlNetRequest, fields)
    if request is None:
        return
    for unit in request.controls:
        assert 0 <= unit.guidance_start < unit.guidance_end <= 1
        assert unit.preprocessor_params == preprocessors.check_params(unit.preprocessor, **unit.preprocessor_params)
    assert request.mode in ("txt2img", "img2img", "inpaint")
    assert_round_trips(request)


# -- stored records changed by hand, or by a hostile PNG's parameters ------------------------


VALID = [
    Text2ImgRequest(
        prompt="a red circle",
        seed=3,
        loras=(("style", 0.5),),
        variation_seed=9,
        variation_strength=0.2,
        ip_adapter_image=PHOTOS[0],
    ),
    Img2ImgRequest(prompt="a red circle", image=PHOTOS[1], strength=0.5),
    InpaintRequest(prompt="a red circle\na blue circle", image=PHOTOS[0], mask_image=MASKS[0], padding_mask_crop=16),
    ControlNetRequest(
        prompt="a red circle",
        controls=(
            ControlUnit(image=PHOTOS[0]),
            ControlUnit(image=PHOTOS[1], preprocessor="shuffle", preprocessor_params={"seed": 4}),
        ),
        image=PHOTOS[0],
        mask_image=MASKS[0],
    ),
]


@st.composite
def edited_records(draw) -> dict:
    data = json.loads(json.dumps(draw(st.sampled_from(VALID)).to_dict()))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.one_of(st.sampled_from(sorted(data)), st.sampled_from(["strength", "controls", "mask_image"])))
        stored_units = data.get("controls")
        if (
            key == "controls"
            and isinstance(stored_units, list)
            and stored_units
            and isinstance(stored_units[0], dict)
            and draw(st.booleans())
        ):
            # Change one key inside a stored ControlNet unit.
            unit = dict(data["controls"][0])
            unit_key = draw(st.one_of(st.sampled_from(UNIT_FIELDS), st.text(min_size=1, max_size=8)))
            unit[unit_key] = draw(st.one_of(junk, st.sampled_from(sorted(IMAGES)), st.just({"seed": 2**90})))
            data["controls"] = [unit, *data["controls"][1:]]
        else:
            data[key] = draw(st.one_of(junk, st.sampled_from(sorted(IMAGES)), st.just("cd" * 32)))
    return data


@BOUNDED
@given(edited_records())
def test_edited_stored_records_read_back_or_say_which_field(data):
    cls = REQUEST_TYPES.get(data.get("task")) if isinstance(data.get("task"), str) else None
    names = (
        (field_names(cls) if cls else [])
        + STORED
        + [f.name for c in REQUEST_TYPES.values() for f in dataclasses.fields(c)]
    )
    try:
        request = request_from_dict(data, IMAGES)
    except RequestError as error:
        assert_one_sentence_naming_a_field(error, names)
        return
    assert_round_trips(request)


def test_the_properties_can_fail():
    """The checks above refuse what they should: a two-sentence or unnamed message fails them."""
    for message in ("width must be 8.\nAnd more.", "something went wrong.", "width must be a multiple of 8"):
        try:
            assert_one_sentence_naming_a_field(RequestError(message), field_names(Text2ImgRequest))
        except AssertionError:
            continue
        raise AssertionError(f"accepted {message!r}")
