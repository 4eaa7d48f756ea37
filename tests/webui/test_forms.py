"""What a person types into a seed box becomes the seed, exactly (issue 19)."""

import pytest

from pipelines.requests import RequestError
from webui.forms import seed_from


@pytest.mark.parametrize(
    ("typed", "seed"),
    [
        ("18446744073709551615", 2**64 - 1),
        (" 42 ", 42),
        ("-1", -1),
        ("", -1),
        (None, -1),
        (2**64 - 1, 2**64 - 1),  # an API client's number arrives as an int
        (7.0, 7),  # an older client's float, while exact
    ],
)
def test_seed_boxes_take_every_64_bit_seed(typed, seed):
    assert seed_from(typed) == seed


@pytest.mark.parametrize(
    ("typed", "shown"),
    [
        ("18446744073709551616", "18446744073709551616"),
        ("--5", "'--5'"),
        ("1e5", "'1e5'"),
        ("٣", "'٣'"),  # a digit, but not one a seed is written in
        ("-2", "-2"),
        (2.0**60, "1.152921504606847e+18"),  # a float past 2**53 may already be rounded
        (True, "True"),
    ],
)
def test_anything_else_is_one_sentence(typed, shown):
    with pytest.raises(RequestError) as raised:
        seed_from(typed, field="variation_seed")
    assert str(raised.value) == f"variation_seed must be a whole number from 0 to {2**64 - 1}, or -1; got {shown}."
