"""`atelier gallery search | show | import | export`, on a gallery filled through the storage API (no model runs)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.requests import Text2ImgRequest
from storage import Gallery, GenerationRecord, ImageInput, NewGeneration
from webui.cli import main


def generation(gallery: Gallery, prompt: str, seed: int, *, batch_size: int = 1, parent_id: int | None = None):
    request = Text2ImgRequest(prompt=prompt, negative_prompt="blurry", seed=seed, width=64, height=64,
                              batch_size=batch_size, sampler="Euler a")  # fmt: skip
    params = request.to_dict()
    started = gallery.start(
        NewGeneration(
            user="ada", task="txt2img", model="embedded", params=params, prompt=prompt, negative_prompt="blurry",
            seed=seed, sampler="Euler a", num_inference_steps=20, guidance_scale=7.0, width=64, height=64,
            batch_size=batch_size, model_revision="abc123", parent_id=parent_id,
        )
    )  # fmt: skip
    colours = [(seed % 256, i * 40, 9) for i in range(batch_size)]
    images = [
        ImageInput("output", Image.new("RGB", (64, 64), colour), seed=seed + i) for i, colour in enumerate(colours)
    ]
    return gallery.finish(started.id, images=images, environment={"device": "cpu"}, timings={}, duration_ms=100)


@pytest.fixture
def filled(tmp_path: Path) -> tuple[list[str], list[GenerationRecord]]:
    data = tmp_path / "data"
    with Gallery(url=f"sqlite:///{data.resolve() / 'gallery.db'}", data_dir=data) as gallery:
        red = generation(gallery, "a red circle on grey", 1, batch_size=2)
        blue = generation(gallery, "a blue square", 2)
        rerun = generation(gallery, "a red circle on grey", 1, batch_size=2, parent_id=red.id)
        gallery.review(red.id, state="approved", note="keep", by="bob")
        gallery.star(red.id, starred=True)
        gallery.add_tags(red.id, ["circle", "red"])
        gallery.create_board("picks", by="ada")
        gallery.add_to_board("picks", [red.id, blue.id])
        records = [gallery.get(record.id) for record in (red, blue, rerun)]
    return ["--data", str(data)], records


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_finds_every_word(filled, capsys) -> None:
    data, (red, blue, rerun) = filled

    code, out, _ = run(capsys, "gallery", "search", "red circle", "--json", *data)
    assert code == 0
    found = json.loads(out)
    assert sorted(row["id"] for row in found) == [red.id, rerun.id]
    assert {row["prompt"] for row in found} == {"a red circle on grey"}
    images = [image for row in found for image in row["images"]]
    assert all(hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() == i["sha256"] for i in images)

    code, out, _ = run(capsys, "gallery", "search", "square", *data)
    assert code == 0
    [line] = out.splitlines()
    assert line.split()[0] == str(blue.id) and line.endswith("a blue square")

    code, out, _ = run(capsys, "gallery", "search", "red", "--limit", "1", "--json", *data)
    assert len(json.loads(out)) == 1


def test_data_may_come_before_the_gallery_command(filled, capsys) -> None:
    data, records = filled
    code, out, _ = run(capsys, "gallery", *data, "list", "--json")
    assert code == 0 and len(json.loads(out)) == len(records)


def test_show_has_every_parameter_images_family_and_review_state(filled, capsys) -> None:
    data, (red, _, rerun) = filled

    code, out, _ = run(capsys, "gallery", "show", str(red.id), "--json", *data)

    assert code == 0
    shown: dict[str, Any] = json.loads(out)
    assert shown["params"] == red.params
    assert [(i["role"], i["position"], i["seed"], i["sha256"]) for i in shown["images"]] == [
        ("output", 0, 1, red.outputs[0].sha256),
        ("output", 1, 2, red.outputs[1].sha256),
    ]
    assert all(hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() == i["sha256"] for i in shown["images"])
    assert (shown["parent_id"], shown["children"]) == (None, [rerun.id])
    review = (shown["review"], shown["review_note"], shown["reviewed_by"], shown["starred"])
    assert review == ("approved", "keep", "bob", True)
    assert (shown["tags"], shown["boards"]) == (["circle", "red"], ["picks"])
    made = (shown["user"], shown["model"], shown["model_revision"], shown["status"])
    assert made == ("ada", "embedded", "abc123", "succeeded")

    code, out, _ = run(capsys, "gallery", "show", str(rerun.id), *data)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"generation {rerun.id}: succeeded"
    assert "  prompt: a red circle on grey" in lines and "  sampler: Euler a" in lines
    assert f"parent: {red.id}" in lines and "children: none" in lines
    assert "review: none" in lines and "tags: none" in lines and "boards: none" in lines
    assert any(rerun.outputs[1].sha256 in line and line.startswith("  output 1  seed 2") for line in lines)


def test_show_of_a_missing_generation_is_one_line(filled, capsys) -> None:
    data, _ = filled
    assert run(capsys, "gallery", "show", "999", *data) == (2, "", "atelier: Generation 999 does not exist.\n")


def a1111_png(path: Path) -> Path:
    info = PngInfo()
    info.add_text(
        "parameters",
        "a misty harbour\nNegative prompt: people\nSteps: 24, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 5, Seed: 77, Size: 512x640, Model: v1-5-pruned-emaonly, Clip skip: 2",
    )
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_import_prints_the_request_with_our_field_names(tmp_path, capsys) -> None:
    png = a1111_png(tmp_path / "harbour.png")

    code, out, _ = run(capsys, "gallery", "import", str(png), "--json", "--data", str(tmp_path / "data"))

    assert code == 0
    assert json.loads(out) == {
        "source": "automatic1111",
        "task": "txt2img",
        "prompt": "a misty harbour",
        "negative_prompt": "people",
        "seed": 77,
        "num_inference_steps": 24,
        "guidance_scale": 5.0,
        "width": 512,
        "height": 640,
        "sampler": "DPM++ 2M Karras",
        "batch_size": 1,
        "model": "embedded",
        "variation_seed": None,
        "variation_strength": 0.0,
        "ip_adapter_image": None,
        "ip_adapter_scale": 0.6,
        "loras": [],
        "refiner": None,
        "refiner_switch": 0.8,
        "unmapped": {"Model": "v1-5-pruned-emaonly", "Clip skip": "2"},
        "inputs": [{"kind": "checkpoint", "name": "v1-5-pruned-emaonly", "field": "model", "picked": None}],
    }

    code, out, _ = run(capsys, "gallery", "import", str(png))
    assert code == 0
    assert out.splitlines() == [
        "source: automatic1111",
        "prompt: a misty harbour",
        "negative_prompt: people",
        "seed: 77",
        "num_inference_steps: 24",
        "guidance_scale: 5.0",
        "width: 512",
        "height: 640",
        "sampler: DPM++ 2M Karras",
        "model: embedded",
        "unmapped:",
        "  Model: v1-5-pruned-emaonly",
        "  Clip skip: 2",
        "inputs:",
        "  checkpoint: v1-5-pruned-emaonly (not in Atelier's lists)",
    ]


def test_import_errors_are_one_line(tmp_path, capsys) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    (tmp_path / "notes.png").write_text("not an image")

    code, out, err = run(capsys, "gallery", "import", str(plain))
    assert (code, out) == (2, "")
    assert err == (
        "atelier: The file carries no generation metadata Atelier can read "
        "(Atelier, AUTOMATIC1111, ComfyUI, Fooocus, InvokeAI or NovelAI).\n"
    )
    for name in ("notes.png", "missing.png"):
        code, out, err = run(capsys, "gallery", "import", str(tmp_path / name))
        assert (code, out) == (2, "")
        assert err.startswith("atelier: ") and err.count("\n") == 1


def test_export_a_board_or_ids(filled, tmp_path, capsys) -> None:
    data, (red, blue, rerun) = filled

    code, out, _ = run(capsys, "gallery", "export", "--board", "picks", "--out", str(tmp_path / "picks.zip"), *data)
    assert code == 0
    assert out == f"wrote 3 images from 2 generations to {tmp_path / 'picks.zip'}\n"
    with zipfile.ZipFile(tmp_path / "picks.zip") as archive:
        assert archive.namelist() == [f"{red.id}-0-1.png", f"{red.id}-1-2.png", f"{blue.id}-0-2.png",
                                      "manifest.json", "manifest.csv"]  # fmt: skip
        assert hashlib.sha256(archive.read(f"{blue.id}-0-2.png")).hexdigest() == blue.outputs[0].sha256

    ids = f"{rerun.id}, {blue.id}"
    code, _, _ = run(capsys, "gallery", "export", "--ids", ids, "--out", str(tmp_path / "ids.zip"), *data)
    assert code == 0
    with zipfile.ZipFile(tmp_path / "ids.zip") as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert [entry["generation_id"] for entry in manifest] == [rerun.id, rerun.id, blue.id]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--board", "nope"], "atelier: Board 'nope' does not exist.\n"),
        (["--ids", "1,x"], "atelier: --ids must be generation ids separated by commas, like 1,2,3; got '1,x'.\n"),
        (["--ids", "1,999"], "atelier: Generation 999 does not exist.\n"),
    ],
)
def test_export_errors_are_one_line_and_write_nothing(filled, tmp_path, capsys, argv, message) -> None:
    data, _ = filled
    out = tmp_path / "out.zip"
    assert run(capsys, "gallery", "export", *argv, "--out", str(out), *data) == (2, "", message)
    assert not out.exists()


def test_export_needs_exactly_one_of_board_and_ids(filled, tmp_path) -> None:
    data, _ = filled
    with pytest.raises(SystemExit) as exited:
        main(["gallery", "export", "--board", "picks", "--ids", "1", "--out", str(tmp_path / "x.zip"), *data])
    assert exited.value.code == 2


def test_gallery_commands_do_not_load_torch(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from webui.cli import main; "
        f"main(['gallery', 'list', '--data', {str(tmp_path)!r}]); "
        "print(sorted({'torch', 'diffusers', 'gradio'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
