"""Every python block of docs/api.md runs (tiny fixtures swapped in for its paths), and the in-memory inputs it
shows label exactly as the files they came from."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from lmpt.predictor import as_inputs

from engine_helpers import tiny_overrides

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_a_string_is_one_path_and_arrays_get_names(tiny_data):
    image = sorted((tiny_data["root"] / "img").glob("test*.png"))[0]
    assert as_inputs(str(image)).paths == [str(image)]
    import numpy as np

    batch = np.zeros((3, 8, 8, 3), np.uint8)  # a 4-D array is a batch (here of HxWx3 images)
    inputs = as_inputs([batch[0], str(image), batch[1]])
    assert inputs.paths == ["<array 0>", str(image), "<array 2>"] and sorted(inputs.images) == [0, 2]
    assert as_inputs(batch).paths == ["<array 0>", "<array 1>", "<array 2>"]


def test_every_python_block_of_the_api_page_runs(tiny_data, tmp_path, monkeypatch):
    from lmpt.engine.use.export import export_run

    config = tmp_path / "config.yaml"
    sections: dict = {"data": {}, "model": {}, "optim": {}, "run": {}}
    for o in tiny_overrides(tiny_data, tmp_path):
        key, value = o.split("=", 1)
        section, name = key.split(".")
        sections[section][name] = yaml.safe_load(value)
    config.write_text(yaml.safe_dump(sections))
    photos = tmp_path / "photos"
    photos.mkdir()
    images = sorted((tiny_data["root"] / "img").glob("test*.png"))[:3]
    for p in images:
        (photos / p.name).write_bytes(p.read_bytes())
    run_dir, model = tmp_path / "runs" / "api-demo", tmp_path / "model.onnx"
    swaps = {'"config.yaml"': config, '"runs/my-run"': run_dir, '"model.onnx"': model, '"photo.jpg"': images[0],
             '"photos/"': photos}
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = python_blocks(DOC)
    assert len(blocks) >= 4
    for block in blocks:
        for old, new in swaps.items():
            block = block.replace(old, repr(str(new)))
        if str(model) in block and not model.exists():
            export_run(run_dir, model)
        exec(compile(block, str(DOC), "exec"), namespace)
    result = namespace["result"]
    names = [p.image for p in result.predictions]
    assert names[:3] == [str(images[0]), "<image 1>", "<array 2>"] and len(names) == 3 + 3
    first = [p.scores for p in result.predictions[:3]]
    assert first[0] == first[1] == first[2]  # a path, its PIL image and its pixels label alike
    assert result.predictions[3].scores == first[0]  # photos/ holds the same image first
