"""scripts/comfy_smoke.py: its UI -> API workflow converter (checked here without ComfyUI), and the live smoke
test itself when a ComfyUI checkout is named by $BYG_COMFY_DIR (skipped otherwise, so CI needs no ComfyUI)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "example_workflows"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke():
    return load("comfy_smoke", ROOT / "scripts" / "comfy_smoke.py")


@pytest.fixture(scope="module")
def object_info(nodes):
    """/object_info as ComfyUI 0.3.64 serves it: the pack's nodes from their INPUT_TYPES, the stock ones from
    the table the workflow tests keep (tests/nodes/test_workflows.py), with the options that matter here."""
    STOCK = load("byg_test_workflows", Path(__file__).with_name("test_workflows.py")).STOCK
    info = {}
    for name, cls in nodes.items():
        spec = cls.INPUT_TYPES()
        info[name] = {"input": {k: {n: list(v) for n, v in spec.get(k, {}).items()} for k in ("required", "optional")},
                      "input_order": {k: list(spec.get(k, {})) for k in ("required", "optional")}}
    uploads = {("LoadImage", "image"): "image_upload", ("LoadVideo", "file"): "video_upload"}
    optional = {("CreateVideo", "audio")}
    for name, (inputs, _) in STOCK.items():
        parts = {"required": {}, "optional": {}}
        for input_name, kind in inputs:
            if name in ("LoadImage", "LoadVideo") and input_name == "upload":
                continue  # the upload button is the frontend's, marked on the file input
            options = {"control_after_generate": True} if input_name == "seed" else {}
            options |= {uploads[name, input_name]: True} if (name, input_name) in uploads else {}
            part = "optional" if (name, input_name) in optional else "required"
            parts[part][input_name] = [["example.png"] if kind == "FILE" else kind, options]
        info[name] = {"input": parts, "input_order": {k: list(v) for k, v in parts.items()}}
    return info


def convert(smoke, object_info, name):
    return smoke.ui_to_api(json.loads((WORKFLOWS / name).read_text()), object_info)


def test_toy_workflow_converts_widgets_in_order_and_links_to_slots(smoke, object_info):
    prompt = convert(smoke, object_info, "byg_toy_train_and_edit.json")
    trainer = prompt["5"]
    assert trainer["class_type"] == "CycleTrainer" and "15" not in prompt  # the Note stays in the browser
    assert trainer["inputs"] == {
        "model": ["1", 0], "dataset": ["2", 0], "objective": ["4", 0], "preset": "auto", "steps": 700,
        "learning_rate": 0.003, "rank": 16, "batch_size": 8, "seed": 0, "save_name": "byg_toy", "resume": False,
        "warmup_identity_steps": 200, "preview_every": 100, "ema_decay": 0.95, "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
    }  # 'fixed' after the seed is the frontend's control value, not an input
    objective = prompt["4"]["inputs"]
    assert objective["image"] == ["3", 0] and objective["t"] == 0.5 and objective["seed"] == 0
    assert prompt["10"]["_meta"]["title"] == "where v_tgt - v_src acts"


def test_stock_workflow_skips_the_seed_control_and_the_upload_button(smoke, object_info):
    prompt = convert(smoke, object_info, "byg_flux_edit_stock_comfyui.json")
    by_type = {v["class_type"]: v["inputs"] for v in prompt.values()}
    assert by_type["LoadImage"] == {"image": "example.png"}
    assert by_type["KSampler"]["seed"] == 0 and by_type["KSampler"]["steps"] == 20
    assert by_type["KSampler"]["denoise"] == 1 and by_type["KSampler"]["sampler_name"] == "euler"


def test_every_example_workflow_converts(smoke, object_info):
    for path in sorted(WORKFLOWS.glob("*.json")):
        prompt = convert(smoke, object_info, path.name)
        for node_id, node in prompt.items():
            declared = object_info[node["class_type"]]["input"]["required"]
            assert set(declared) <= set(node["inputs"]), f"{path.name} node {node_id} misses required inputs"


def test_a_workflow_saved_for_another_node_version_is_refused(smoke, object_info):
    workflow = json.loads((WORKFLOWS / "byg_toy_train_and_edit.json").read_text())
    trainer = next(n for n in workflow["nodes"] if n["type"] == "CycleTrainer")
    trainer["widgets_values"] = trainer["widgets_values"][1:]  # saved before the preset widget existed
    with pytest.raises(ValueError, match=r"node 5 \(CycleTrainer\): no saved value for widget 'lr_warmup_steps'; re-save"):
        smoke.ui_to_api(workflow, object_info)
    trainer["widgets_values"] = [*trainer["widgets_values"], 0.95, 0.9]
    with pytest.raises(ValueError, match=r"node 5 \(CycleTrainer\): 1 saved widget value\(s\) left over \(\[0.9\]\)"):
        smoke.ui_to_api(workflow, object_info)
    workflow = json.loads((WORKFLOWS / "byg_toy_train_and_edit.json").read_text())
    workflow["nodes"].append({"id": 99, "type": "SomeoneElsesNode", "inputs": [], "widgets_values": []})
    with pytest.raises(ValueError, match=r"node 99 \(SomeoneElsesNode\) is not a node this ComfyUI knows"):
        smoke.ui_to_api(workflow, object_info)


def test_live_smoke_against_a_real_comfyui():
    """The whole smoke test, when $BYG_COMFY_DIR names a ComfyUI checkout ($BYG_COMFY_PYTHON its Python)."""
    comfy = os.environ.get("BYG_COMFY_DIR")
    if not comfy:
        pytest.skip("no ComfyUI checkout: set BYG_COMFY_DIR (and BYG_COMFY_PYTHON) to run the live smoke test")
    python = os.environ.get("BYG_COMFY_PYTHON", sys.executable)
    result = subprocess.run([python, str(ROOT / "scripts" / "comfy_smoke.py"), "--comfy", comfy],
                            capture_output=True, text=True, timeout=3000)
    print(result.stdout[-20000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]


def test_without_comfyui_the_smoke_script_skips_with_a_message():
    env = {k: v for k, v in os.environ.items() if k != "BYG_COMFY_DIR"}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "comfy_smoke.py")], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0 and "SKIPPED: no ComfyUI checkout given" in result.stdout


def test_video_workflows_take_stock_video_nodes_with_the_frame_rate_linked(smoke, object_info):
    for name, between in (("byg_toy_wan_video_train_and_edit.json", []),
                          ("byg_wan22_video_train_and_edit.json", ["ImageScale", "ImageFromBatch"])):
        prompt = convert(smoke, object_info, name)
        by_type = {v["class_type"]: (k, v["inputs"]) for k, v in prompt.items()}
        components, _ = by_type["GetVideoComponents"]
        assert set(by_type["LoadVideo"][1]) == {"file"}  # the upload button's saved value is skipped
        assert by_type["CreateVideo"][1]["fps"] == [components, 2]  # the source's frame rate, not the widget's
        assert by_type["SaveVideo"][1]["video"] == [by_type["CreateVideo"][0], 0]
        chain, node = [], by_type["BYGVideoEdit"][1]["frames"][0]  # back from the edit to the decoded frames
        while node != components:
            chain.append(prompt[node]["class_type"])
            node = prompt[node]["inputs"]["image"][0]
        assert chain == between  # the 81 frames kept, then resized
