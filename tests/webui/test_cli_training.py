"""`atelier lora train`, as a user runs it: refused datasets, and a killed job that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from pipelines.embedded.world import caption, render, sample_scene
from webui.cli import main


def _dataset(folder, n):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        scene = sample_scene(rng)
        Image.fromarray(render(scene)).save(folder / f"p{i:02d}.png")
        (folder / f"p{i:02d}.txt").write_text(caption(scene, rng))


def test_a_bad_dataset_gets_one_sentence_and_nothing_is_written(tmp_path, capsys):
    _dataset(tmp_path / "few", 3)
    data = tmp_path / "data"
    code = main(["lora", "train", str(tmp_path / "few"), "--name", "brand", "--data", str(data)])
    error = capsys.readouterr().err
    assert code == 2
    assert error == "atelier: dataset must hold 20 to 100 images; few has 3.\n"
    assert not (data / "loras").exists() or list((data / "loras").iterdir()) == []
    code = main(["lora", "train", str(tmp_path / "few"), "--name", "../up", "--data", str(data)])
    assert code == 2 and capsys.readouterr().err.startswith("atelier: name must be 1 to 64 letters")


def test_a_killed_job_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, capsys):
    _dataset(tmp_path / "set", 20)
    data = tmp_path / "data"
    command = [
        str(sys.executable), "-m", "webui.cli", "lora", "train", str(tmp_path / "set"),
        "--name", "brand", "--trigger", "sks", "--steps", "60", "--json", "--data", str(data),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "33554432"}
    checkpoint = data / "loras" / ".brand.training" / "checkpoint.pt"
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), job.communicate()[1].decode()[-2000:]
    job.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
    job.wait()
    assert not (data / "loras" / "brand.safetensors").exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    resumed = json.loads(again.stdout)
    assert resumed["resumed_from"] == 50 and resumed["steps"] == 60
    assert not checkpoint.parent.exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["lora", "train", str(tmp_path / "set"), "--name", "whole", "--trigger", "sks", "--steps", "60",
                     "--json", "--data", str(data)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole["resumed_from"] == 0
    a, b = load_file(resumed["path"]), load_file(whole["path"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((data / "loras" / "brand.json").read_text())
    assert card["resumed_from"] == 50 and len(card["loss"]["values"]) == 60
