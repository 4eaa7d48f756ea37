"""Files are served only from the gallery's image folders, whatever path a client asks for.

Gradio (6.x, gradio/routes.py) serves files at ``/gradio_api/file=<path>``
(and the older ``/gradio_api/file/<path>``) from ``allowed_paths``, its upload
cache and static files. The studio allows only what its pages show: images/,
thumbs/, the placeholder tiles and the ZIP exports; the database (users and
their password hashes included), pending files, LoRAs and settings in the
data folder are not served. Requests go out byte for byte (http.client does
not tidy ``..`` away, as a browser or httpx would).
"""

import http.client
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from gradio_client import Client

from pipelines.requests import Text2ImgRequest

REPO = Path(__file__).resolve().parents[2]
SERVED = ("images", "thumbs", "placeholders", "exports")  # the folders of the data folder the pages show
UP = "../" * 12


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET exactly `path` (no normalising, no re-encoding) from the app at `url`."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def gallery(launched):
    """One record, plus the kinds of private file a data folder holds next to the images."""
    studio, url = launched
    record = studio.submit(
        Text2ImgRequest(prompt="a red circle on a blue background", seed=1, width=64, height=64, num_inference_steps=2),
        user="ada",
    )
    data = studio.settings.data_dir.resolve()
    (data / "loras").mkdir(exist_ok=True)
    (data / "loras" / "private.safetensors").write_bytes(b"PRIVATE-LORA-WEIGHTS")
    (data / "models.json").write_text('[{"name": "private", "source": "/secret/model.safetensors"}]')
    (data / ".env").write_text("ATELIER_SECRET=PRIVATE-SETTING\n")
    return studio, url, record, data


def private_files(data: Path) -> list[Path]:
    files = [p for p in data.rglob("*") if p.is_file() and p.relative_to(data).parts[0] not in SERVED]
    assert {"gallery.db", "models.json", ".env"} <= {p.name for p in files}
    return files


def test_the_database_and_other_private_files_are_not_served(gallery):
    studio, url, record, data = gallery
    for path in private_files(data):
        for route in ("/gradio_api/file=", "/gradio_api/file/"):
            status, body = raw_get(url, route + quote(str(path)))
            assert status in (403, 404), (path, route, status)
            assert not body.startswith(b"SQLite format 3") and b"PRIVATE" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=/proc/self/environ",
        f"/gradio_api/file={UP}etc/passwd",
        "/gradio_api/file=" + "%2e%2e%2f" * 12 + "etc%2fpasswd",
        "/gradio_api/file=" + "..%2f" * 12 + "etc/passwd",
        "/gradio_api/file=" + "%252e%252e%252f" * 12 + "etc%252fpasswd",
        "/gradio_api/file=" + "..%5c" * 12 + "etc%5cpasswd",
        "/gradio_api/file/etc/passwd",
        "/gradio_api/file//etc/passwd",
        f"/gradio_api/file/{UP}etc/passwd",
        "/file=/etc/passwd",
        "/file/etc/passwd",
        "/gradio_api/file=pyproject.toml",
        f"/gradio_api/file={REPO}/pyproject.toml",
        f"/gradio_api/file={REPO}/webui/settings.py",
        "/gradio_api/file=~/.bashrc",
    ],
)
def test_paths_outside_the_served_folders_are_refused(gallery, path):
    _, url, _, _ = gallery
    status, body = raw_get(url, path)
    assert status in (403, 404), (path, status, body[:200])
    assert b"root:" not in body and b"[project]" not in body and b"class Settings" not in body


@pytest.mark.parametrize(
    "escape",
    [
        "images/{up}etc/passwd",
        "images/" + "%2e%2e/" * 12 + "etc/passwd",
        "images/" + "..%2f" * 12 + "etc/passwd",
        "thumbs/../gallery.db",
        "images/%2e%2e/gallery.db",
        "images/..%2fgallery.db",
        "images/../models.json",
        "images/../loras/private.safetensors",
        "images/./../.env",
        "images",
        "thumbs/",
    ],
)
def test_paths_that_start_in_a_served_folder_and_climb_out_are_refused(gallery, escape):
    _, url, _, data = gallery
    path = f"/gradio_api/file={data}/" + escape.format(up=UP)
    status, body = raw_get(url, path)
    assert status in (403, 404), (path, status, body[:200])
    assert b"root:" not in body and not body.startswith(b"SQLite format 3") and b"PRIVATE" not in body


def test_a_url_is_not_fetched_on_the_servers_behalf(gallery):
    _, url, _, data = gallery
    target = f"{url}gradio_api/file={data}/gallery.db"
    status, body = raw_get(url, "/gradio_api/file=" + target)
    assert status != 200 or not body.startswith(b"SQLite format 3"), status


def test_gallery_images_and_thumbnails_are_served(gallery):
    studio, url, record, data = gallery
    [image] = record.outputs
    for relative in (image.path, image.thumb_path):
        file = data / relative
        status, body = raw_get(url, f"/gradio_api/file={quote(str(file))}")
        assert status == 200, (relative, status)
        assert body == file.read_bytes()
    # Through httpx as well, the way a browser asks.
    response = httpx.get(f"{url}gradio_api/file={data / image.path}", timeout=30)
    assert response.status_code == 200 and response.content == (data / image.path).read_bytes()


def test_what_the_pages_hand_out_still_downloads(gallery, tmp_path):
    """The record view, a placeholder tile and a ZIP export: each URL the app gives answers 200."""
    studio, url, record, data = gallery
    client = Client(url, verbose=False, download_files=str(tmp_path))
    _, image, *_ = client.predict(record.id, api_name="/gallery_record")
    assert Path(image).read_bytes() == (data / record.outputs[0].path).read_bytes()

    from pipelines.progress import CancelToken

    token = CancelToken()
    token.cancel()
    studio.submit(Text2ImgRequest(prompt="a cancelled square", width=64, height=64), user="ada", cancel=token)
    filters = ["cancelled square", "everyone", "", "", "any", "any", False, "", "any", "", "", "cancelled"]
    response = httpx.post(f"{url}gradio_api/run/gallery_search", json={"data": filters}, timeout=60)
    assert response.status_code == 200, response.text
    [tile] = response.json()["data"][0]
    assert httpx.get(tile["image"]["url"], timeout=30).status_code == 200

    studio.gallery.create_board("traversal", by="ada")
    studio.gallery.add_to_board("traversal", [record.id])
    exported = client.predict("traversal", api_name="/export")
    assert Path(exported).read_bytes()[:2] == b"PK"
