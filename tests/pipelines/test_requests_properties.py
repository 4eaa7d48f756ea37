"""Property-based: whatever a client sends, a request is either valid and
round-trips exactly, or refused with one sentence naming the field."""

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.requests import REQUEST_TYPES, RequestError, Text2ImgRequest, request_from_dict

FIELDS = [f.name for f in dataclasses.fields(Text2ImgRequest)]

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    # Around the prompt length limit (10,000 characters).
    st.integers(min_value=9_990, max_value=10_010).map(lambda n: "x" * n),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), anything, min_size=1))
def test_any_field_values_give_a_valid_request_or_one_clear_sentence(values):
    fields = {"prompt": "a red circle", **values}
    try:
        request = Text2ImgRequest(**fields)
    except RequestError as error:
        message = str(error)
        assert message.endswith(".") and "\n" not in message
        assert any(message.startswith(name) for name in FIELDS), message
        return
    again = request_from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request and again.to_dict() == request.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), anything, max_size=6))
def test_stored_dicts_from_anywhere_never_crash_the_reader(data):
    try:
        request = request_from_dict(data)
    except RequestError:
        return
    assert type(request) in REQUEST_TYPES.values()
