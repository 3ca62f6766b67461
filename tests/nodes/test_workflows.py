"""Every workflow in example_workflows/ loads in ComfyUI: known node types, widget values that line up with the
nodes' inputs (number, order, type), and links that join matching types.

Stock nodes are described by a table written from ComfyUI's source (notes on ComfyUI 0.3.64), not by importing
ComfyUI: each input is (name, kind) with kind a socket type, a widget type, a list of options, or FILE (a combo
listing model/input files, any name).
"""

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}
SEED_CONTROL = {"fixed", "increment", "decrement", "randomize"}
FILE = "FILE"
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "uni_pc"]  # a subset; euler comes first
SCHEDULERS = ["simple", "normal", "karras", "exponential", "sgm_uniform", "beta"]

STOCK = {
    "UNETLoader": ([("unet_name", FILE), ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])], ["MODEL"]),
    "LoraLoaderModelOnly": ([("model", "MODEL"), ("lora_name", FILE), ("strength_model", "FLOAT")], ["MODEL"]),
    "DualCLIPLoader": ([("clip_name1", FILE), ("clip_name2", FILE),
                        ("type", ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]),
                        ("device", ["default", "cpu"])], ["CLIP"]),
    "VAELoader": ([("vae_name", FILE)], ["VAE"]),
    "LoadImage": ([("image", FILE), ("upload", ["image"])], ["IMAGE", "MASK"]),
    "FluxKontextImageScale": ([("image", "IMAGE")], ["IMAGE"]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], ["LATENT"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"]),
    "CLIPTextEncode": ([("text", "STRING"), ("clip", "CLIP")], ["CONDITIONING"]),
    "ReferenceLatent": ([("conditioning", "CONDITIONING"), ("latent", "LATENT")], ["CONDITIONING"]),
    "FluxGuidance": ([("conditioning", "CONDITIONING"), ("guidance", "FLOAT")], ["CONDITIONING"]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING")], ["CONDITIONING"]),
    "KSampler": ([("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"), ("sampler_name", SAMPLERS),
                  ("scheduler", SCHEDULERS), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT"), ("denoise", "FLOAT")], ["LATENT"]),
    "SaveImage": ([("images", "IMAGE"), ("filename_prefix", "STRING")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "ImageScale": ([("image", "IMAGE"), ("upscale_method", ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]),
                    ("width", "INT"), ("height", "INT"), ("crop", ["disabled", "center"])], ["IMAGE"]),
    "RepeatImageBatch": ([("image", "IMAGE"), ("amount", "INT")], ["IMAGE"]),
    "CLIPLoader": ([("clip_name", FILE), ("type", ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi",
                                                   "ltxv", "pixart", "cosmos", "lumina2", "wan", "hidream", "chroma",
                                                   "ace", "omnigen2", "qwen_image", "hunyuan_image"]),
                    ("device", ["default", "cpu"])], ["CLIP"]),
    "ImageFromBatch": ([("image", "IMAGE"), ("batch_index", "INT"), ("length", "INT")], ["IMAGE"]),
    # comfy_extras/nodes_video.py (V3 nodes): VIDEO sockets; LoadVideo's upload button saves a value after the file
    "LoadVideo": ([("file", FILE), ("upload", ["image"])], ["VIDEO"]),
    "GetVideoComponents": ([("video", "VIDEO")], ["IMAGE", "AUDIO", "FLOAT"]),
    "CreateVideo": ([("images", "IMAGE"), ("fps", "FLOAT"), ("audio", "AUDIO")], ["VIDEO"]),
    "SaveVideo": ([("video", "VIDEO"), ("filename_prefix", "STRING"), ("format", ["auto", "mp4"]),
                   ("codec", ["auto", "h264"])], []),
    "Note": ([("text", "STRING")], []),  # frontend-only node
}


PACK_FILE_LISTS = {("BYGModelLoader", "diffusion_model"), ("BYGLoRALoader", "lora_name")}  # list a user's files


def definition(nodes, node_type):
    """(inputs [(name, kind, options)], output types) of a pack or stock node."""
    if node_type in nodes:
        cls = nodes[node_type]
        spec = cls.INPUT_TYPES()
        inputs = [(k, FILE if (node_type, k) in PACK_FILE_LISTS else v[0], v[1])
                  for part in ("required", "optional") for k, v in spec.get(part, {}).items()]
        return inputs, list(cls.RETURN_TYPES)
    assert node_type in STOCK, f"unknown node type {node_type}: neither this pack's nor a stock ComfyUI node"
    inputs, outputs = STOCK[node_type]
    return [(k, kind, {}) for k, kind in inputs], outputs


def is_widget(kind, options) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES or kind == FILE) and not options.get("forceInput")


def expected_widgets(inputs):
    """One entry per saved value: (name, kind, options); seed-like INTs are followed by their control value."""
    for name, kind, options in inputs:
        if not is_widget(kind, options):
            continue
        yield name, kind, options
        control = options.get("control_after_generate", name in ("seed", "noise_seed"))
        if kind == "INT" and control:
            yield f"{name} control", sorted(SEED_CONTROL), {}


@pytest.fixture(params=WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def workflow(request):
    return json.loads(request.param.read_text())


def test_the_promised_workflows_exist():
    assert {"byg_toy_train_and_edit.json", "byg_flux_edit_stock_comfyui.json", "byg_flux_train_and_edit.json"} <= \
        {p.name for p in WORKFLOWS}


def test_workflow_is_ui_format(workflow):
    assert workflow["version"] == 0.4 and isinstance(workflow["nodes"], list) and isinstance(workflow["links"], list)
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(set(ids)) == len(ids) and workflow["last_node_id"] >= max(ids)
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)


def test_widget_values_match_inputs_in_number_order_and_type(workflow, nodes):
    for node in workflow["nodes"]:
        inputs, _ = definition(nodes, node["type"])
        widgets = list(expected_widgets(inputs))
        values = node.get("widgets_values", [])
        where = f"node {node['id']} ({node['type']})"
        assert len(values) == len(widgets), f"{where}: {len(values)} values for widgets {[w[0] for w in widgets]}"
        for value, (name, kind, options) in zip(values, widgets):
            if isinstance(kind, list):
                assert value in kind, f"{where}.{name}: {value!r} not in {kind}"
            elif kind == FILE:
                assert isinstance(value, str) and value, f"{where}.{name}: {value!r} is not a file name"
            else:
                assert isinstance(value, WIDGET_TYPES[kind]) and not (kind != "BOOLEAN" and isinstance(value, bool)), \
                    f"{where}.{name}: {value!r} is not {kind}"
                if kind in ("INT", "FLOAT") and "min" in options:
                    assert options["min"] <= value <= options["max"], f"{where}.{name}: {value} out of range"


def test_sockets_and_links_join_matching_types(workflow, nodes):
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        inputs, outputs = definition(nodes, node["type"])
        sockets = [(k, kind) for k, kind, options in inputs if not is_widget(kind, options)]
        assert [(i["name"], i["type"]) for i in node["inputs"] if "widget" not in i] == sockets, node["type"]
        assert [o["type"] for o in node["outputs"]] == outputs, node["type"]
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out = by_id[origin]["outputs"][origin_slot]
        into = by_id[target]["inputs"][target_slot]
        assert out["type"] == kind == into["type"], f"link {link_id}: {out['type']} -> {into['type']} as {kind}"
        assert link_id in (out["links"] or []) and into["link"] == link_id, f"link {link_id} is not wired both ends"
    linked = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for socket in node["inputs"]:
            assert socket["link"] is None or socket["link"] in linked


def test_required_sockets_are_connected(workflow, nodes):
    for node in workflow["nodes"]:
        if node["type"] in nodes:
            required = nodes[node["type"]].INPUT_TYPES()["required"]
            for socket in node["inputs"]:
                if socket["name"] in required:
                    assert socket["link"] is not None, f"{node['type']}.{socket['name']} is not connected"


def test_flux_workflow_shows_the_stock_comfyui_path():
    flux = json.loads(next(p for p in WORKFLOWS if p.name == "byg_flux_edit_stock_comfyui.json").read_text())
    types = {n["type"] for n in flux["nodes"]}
    assert {"LoraLoaderModelOnly", "ReferenceLatent", "KSampler", "UNETLoader", "VAEEncode", "VAEDecode"} <= types


# --- readable when loaded: no node covers another's widgets, the saved view shows every title -------------------
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, TEXTAREA_HEIGHT, IMAGE_HEIGHT = 30, 20, 24, 64, 200
IMAGE_NODES = {"PreviewImage", "SaveImage", "LoadImage", "LoadVideo", "SaveVideo"}  # draw an image under their widgets
VIEW = (1600, 900)  # a laptop-sized canvas, in screen pixels


def body_height(nodes, node) -> int:
    """A lower bound of the height the frontend draws a node's body at: slot rows, one row per widget (a
    textarea is taller), and the image of an image node."""
    inputs, outputs = definition(nodes, node["type"])
    sockets = [name for name, kind, options in inputs if not is_widget(kind, options)]
    widgets = list(expected_widgets(inputs))
    textareas = sum(1 for name, kind, options in widgets
                    if kind == "STRING" and (options.get("multiline") or name == "text"))
    rows = max(len(sockets), len(outputs))
    height = SLOT_HEIGHT * rows + WIDGET_HEIGHT * (len(widgets) - textareas) + TEXTAREA_HEIGHT * textareas
    return height + (IMAGE_HEIGHT if node["type"] in IMAGE_NODES else 0)


def test_nodes_are_tall_enough_for_their_widgets(workflow, nodes):
    for node in workflow["nodes"]:
        assert node["size"][1] >= body_height(nodes, node), \
            f"node {node['id']} ({node['type']}) is {node['size'][1]} px tall, its widgets need {body_height(nodes, node)}"


def test_no_node_overlaps_another(workflow):
    def box(node):  # the title bar is drawn above pos
        (x, y), (w, h) = node["pos"], node["size"]
        return x, y - TITLE_HEIGHT, x + w, y + h

    placed = [(node["id"], box(node)) for node in workflow["nodes"]]
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(placed):
        for b, (bx0, by0, bx1, by1) in placed[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"


def test_the_saved_view_shows_every_node_title(workflow):
    scale, (dx, dy) = workflow["extra"]["ds"]["scale"], workflow["extra"]["ds"]["offset"]
    for node in workflow["nodes"]:
        (x, y), (w, _) = node["pos"], node["size"]
        left, top, right = (x + dx) * scale, (y - TITLE_HEIGHT + dy) * scale, (x + w + dx) * scale
        assert 0 <= left and right <= VIEW[0] and 0 <= top and (y + dy) * scale <= VIEW[1], \
            f"node {node['id']} ({node['type']})'s title is outside the saved {VIEW[0]}x{VIEW[1]} view"


def test_flux_workflow_loads_the_base_byg_trains_on():
    """A ByG FLUX LoRA is trained on FLUX.1-dev: the stock graph loads FLUX.1-dev with its guidance, not Kontext."""
    flux = json.loads(next(p for p in WORKFLOWS if p.name == "byg_flux_edit_stock_comfyui.json").read_text())
    by_type = {n["type"]: n for n in flux["nodes"]}
    unet = by_type["UNETLoader"]["widgets_values"][0]
    assert unet.startswith("flux1-dev") and "kontext" not in unet.lower()
    assert by_type["FluxGuidance"]["widgets_values"] == [3.5]

