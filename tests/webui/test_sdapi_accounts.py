"""The /sdapi/v1 API on a studio with accounts: HTTP Basic against the same users, generations attributed."""

from __future__ import annotations

import json

import httpx
import pytest
import webuiapi

from storage import Users
from webui.settings import Settings

from .conftest import free_port, serving

PASSWORD = "ann's password"


@pytest.fixture(scope="module")
def with_accounts(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("sdapi-accounts"), user="ada", port=free_port())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with Users(url=settings.gallery_url) as users:
        users.add_user("ann", PASSWORD)
    with serving(settings) as served:
        yield served


def test_a_logged_in_client_generates_as_its_account(with_accounts) -> None:
    studio, url = with_accounts
    api = webuiapi.WebUIApi(baseurl=f"{url}sdapi/v1", username="ann", password=PASSWORD, sampler="Euler", steps=2)

    result = api.txt2img(prompt="a red circle on a blue background", seed=3, width=64, height=64)

    record = studio.gallery.get(result.json["generation_id"])
    assert (record.user, record.status) == ("ann", "succeeded")
    assert json.loads(result.json["info"])["all_seeds"] == [3]
    assert studio.rerun(record.id, user="ann").identical
    # Progress and interrupt are the caller's own.
    assert api.get_progress()["state"]["job_count"] == 0
    assert api.interrupt() == {"interrupted": 0}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Basic " + "YW5uOndyb25n"}, {"Authorization": "Bearer abc"}],
    ids=["none", "empty", "wrong password", "not basic"],
)
def test_a_call_without_a_good_login_is_refused_with_the_challenge(with_accounts, headers) -> None:
    studio, url = with_accounts
    before = studio.gallery.count()

    for method, route in (("GET", "sd-models"), ("GET", "progress"), ("POST", "txt2img"), ("POST", "options")):
        response = httpx.request(method, f"{url}sdapi/v1/{route}", headers=headers, json={"prompt": "x"})
        assert response.status_code == 401, (route, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert studio.gallery.count() == before
