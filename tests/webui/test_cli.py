"""The `atelier` command, as a script or a user runs it."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from storage.pngmeta import read_png_metadata
from webui.cli import main


def test_generate_then_rerun_reports_identical(tmp_path):
    """The installed console script, end to end, in a scratch gallery."""
    atelier = Path(sys.executable).with_name("atelier")
    data = ["--data", str(tmp_path / "gallery")]
    made = subprocess.run(
        [str(atelier), "generate", "--prompt", "a blue square", "--seed", "9", "--steps", "3", "--json", *data],
        capture_output=True,
        text=True,
        check=True,
    )
    generated = json.loads(made.stdout)
    [image] = generated["images"]
    assert image["seed"] == 9
    assert hashlib.sha256(Path(image["path"]).read_bytes()).hexdigest() == image["sha256"]

    again = subprocess.run(
        [str(atelier), "rerun", str(generated["id"]), "--json", *data],
        capture_output=True,
        text=True,
        check=True,
    )
    rerun = json.loads(again.stdout)
    assert rerun["parent_id"] == generated["id"]
    assert rerun["identical"] is True
    assert rerun["images"][0]["sha256"] == image["sha256"]


def test_gallery_list_shows_what_generate_made(tmp_path, capsys):
    data = ["--data", str(tmp_path)]
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a green triangle",
                "--seed",
                "1",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--json",
                *data,
            ]
        )
        == 0
    )
    made = json.loads(capsys.readouterr().out)
    assert [i["seed"] for i in made["images"]] == [1, 2]
    assert main(["gallery", "list", "--json", *data]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["id"] == made["id"] and listed["prompt"] == "a green triangle"


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--width", "100", "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "atelier: width must be a multiple of 8 from 64 to 2048; got 100.\n"
    assert not (tmp_path / "gallery.db").exists()


def test_a_64_bit_seed_and_a_comfyui_sampler_name(tmp_path, capsys):
    """Issue 19: ComfyUI's seeds and sampler names work as they are written there."""
    data = ["--data", str(tmp_path)]
    arguments = ["--prompt", "a red circle", "--steps", "3", "--batch-size", "2", "--json", *data]
    top = ["--seed", str(2**64 - 1), "--sampler", "dpmpp_2m_sde_gpu", "--scheduler", "karras"]
    assert main(["generate", *arguments, *top]) == 0
    made = json.loads(capsys.readouterr().out)
    assert [image["seed"] for image in made["images"]] == [2**64 - 1, 0]
    assert "Seed: 18446744073709551615, " in read_png_metadata(made["images"][0]["path"])["parameters"]
    assert "Sampler: DPM++ 2M SDE Karras, " in read_png_metadata(made["images"][0]["path"])["parameters"]
    assert main(["rerun", str(made["id"]), "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is True

    assert main(["generate", *arguments, "--sampler", "dpm_fast"]) == 2
    assert capsys.readouterr().err.startswith("atelier: sampler 'dpm_fast' has no diffusers equivalent here; allowed: ")
    assert main(["generate", *arguments, "--seed", str(2**64)]) == 2
    assert "seed must be a whole number from 0 to 18446744073709551615; got 18446744073709551616." in (
        capsys.readouterr().err
    )


def test_rerun_of_a_missing_record_says_so(tmp_path, capsys):
    assert main(["rerun", "42", "--data", str(tmp_path)]) == 2
    assert "42" in capsys.readouterr().err


def test_generate_with_a_lora_a_variation_and_a_bad_lora_weight(tmp_path, capsys):
    from pipelines.engine import Engine

    from .conftest import save_lora

    data = ["--data", str(tmp_path)]
    (tmp_path / "loras").mkdir()
    save_lora(tmp_path / "loras" / "brand.safetensors", Engine().load("embedded").base, seed=2)
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a red circle",
                "--seed",
                "4",
                "--steps",
                "3",
                "--lora",
                "brand:0.6",
                "--variation-seed",
                "9",
                "--variation-strength",
                "0.2",
                "--json",
                *data,
            ]
        )
        == 0
    )
    made = json.loads(capsys.readouterr().out)
    assert main(["gallery", "show", str(made["id"]), "--json", *data]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert (params["loras"], params["variation_seed"], params["variation_strength"]) == ([["brand", 0.6]], 9, 0.2)

    assert main(["generate", "--prompt", "x", "--lora", "brand:strong", *data]) == 2
    assert capsys.readouterr().err == (
        "atelier: --lora must be NAME or NAME:WEIGHT with a number for the weight; got 'brand:strong'.\n"
    )
    assert main(["generate", "--prompt", "x", "--refiner", str(tmp_path / "gone"), *data]) == 2
    assert "refiner" in capsys.readouterr().err
    assert main(["gallery", "list", "--json", *data]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1  # the refused runs wrote nothing
