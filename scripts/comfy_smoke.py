#!/usr/bin/env python3
"""Live smoke test: the pack inside a real ComfyUI server, driven the way a user's browser drives it.

    python scripts/comfy_smoke.py --comfy /path/to/ComfyUI [--python /path/to/ComfyUI's/python]

Given a ComfyUI checkout (a scratch copy; nothing in it is changed), it makes a scratch base folder
(``--base-directory``: models, input, output, temp, user and custom_nodes live there, the pack linked
into its custom_nodes/), starts the server on the CPU on a free loopback port, converts every example
workflow from the UI format to the API format, queues the toy workflows through ``POST /prompt``,
follows the websocket (progress and preview messages), checks ``/history`` and the written files,
presses Cancel (``POST /interrupt``) in the middle of a training and resumes it, and stops the server
it started by its PID. It also runs ``comfy_lora_check.py`` (stock ComfyUI's LoRA loader on this pack's FLUX
and Wan2.2 files, at the default targets and at every linear layer). Without a ComfyUI it says so and exits 0,
so CI stays green without one.

Run it with ComfyUI's Python (it needs aiohttp, which ComfyUI requires) with this pack's requirements
installed, or name that Python with ``--python``. Exit status: 0 all checks passed (or skipped), 1 a
check failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK / "example_workflows"
PACK_LINK = "comfyui-byg"
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # nodes the browser draws and never sends to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_BUTTONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
TOY_IMAGE = "byg_toy_train_and_edit.json"
TOY_VIDEO = "byg_toy_wan_video_train_and_edit.json"
TOY_CLIP = "toy_clip.mp4"  # the toy video workflow's LoadVideo file
PACK_NODES = {"BYGModelLoader", "BYGDataset", "DirectionalPriorLoss", "CycleTrainer", "BYGLoRALoader",
              "BootstrapSampler", "BYGVideoEdit", "BYGToyScene", "BYGToyDataset"}


# --- UI format -> API format ----------------------------------------------------------------------------------
def _is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _has_control_value(name: str, kind, options: dict) -> bool:
    """The frontend saves a control_after_generate value ("fixed", "randomize", ...) after a seed widget."""
    return kind == "INT" and options.get("control_after_generate", name in ("seed", "noise_seed"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A workflow as the browser saves it (nodes, links, widgets_values) -> the prompt ``POST /prompt`` takes.

    Widget values map to the node's widget inputs in INPUT_TYPES order (``input_order``), skipping the
    control value saved after a seed and the upload button's value; a linked input becomes
    ``[origin id, origin slot]``. Notes are dropped; muted nodes are left out.
    """
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        kind, where = node["type"], f"node {node['id']} ({node['type']})"
        if kind in FRONTEND_ONLY or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) == 4:
            raise ValueError(f"{where} is bypassed; this converter does not route bypassed nodes: un-bypass or remove it")
        if kind not in object_info:
            raise ValueError(f"{where} is not a node this ComfyUI knows: install the pack that provides it")
        info = object_info[kind]
        order = info.get("input_order") or {part: list(info["input"].get(part, {})) for part in ("required", "optional")}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        saved = node.get("widgets_values") or []
        values = iter(saved) if isinstance(saved, list) else None
        inputs = {}
        for part in ("required", "optional"):
            for name in order.get(part, []):
                kind_, options = (info["input"][part][name] + [{}])[:2]
                if _is_widget(kind_, options or {}):
                    options = options or {}
                    if values is None:  # some frontends save widgets by name
                        if name in saved:
                            inputs[name] = saved[name]
                    else:
                        try:
                            inputs[name] = next(values)
                        except StopIteration:
                            raise ValueError(f"{where}: no saved value for widget '{name}'; re-save the workflow "
                                             "with this version of the node") from None
                        if _has_control_value(name, kind_, options):
                            next(values, None)
                        if any(options.get(button) for button in UPLOAD_BUTTONS):
                            next(values, None)
                if name in linked:
                    _, origin, origin_slot, *_ = linked[name]
                    inputs[name] = [str(origin), origin_slot]
        if values is not None and (left := list(values)):
            raise ValueError(f"{where}: {len(left)} saved widget value(s) left over ({left!r}); the workflow was "
                             "saved for another version of the node")
        title = node.get("title") or info.get("display_name") or kind
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}
    return prompt


# --- the server -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    """What the websocket and /history said about one queued prompt."""

    prompt_id: str
    status: str = "pending"  # success | error | interrupted | timeout
    error: str = ""
    seconds: float = 0.0
    progress: dict = field(default_factory=dict)  # node id -> the progress values sent for it
    previews: int = 0  # binary preview frames
    executed: dict = field(default_factory=dict)  # node id -> its ui output
    history: dict = field(default_factory=dict)


class Server:
    """A ComfyUI server this script started, on loopback, with a scratch base folder."""

    def __init__(self, comfy: Path, python: str, base: Path, port: int) -> None:
        self.comfy, self.python, self.base, self.port = comfy, python, base, port
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None
        self.log = base / "server.log"

    def start(self, timeout: float = 300) -> None:
        command = [self.python, str(self.comfy / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--disable-auto-launch"]
        if "--database-url" in (self.comfy / "comfy" / "cli_args.py").read_text(encoding="utf-8"):
            command += ["--database-url", "sqlite:///:memory:"]  # nothing written into the checkout
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfy, stdout=log, stderr=subprocess.STDOUT)
        print(f"started ComfyUI (PID {self.process.pid}) on {self.url}; log {self.log}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/object_info/BYGModelLoader")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        print(f"stopped ComfyUI (PID {self.process.pid})")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.is_file() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        return 200, json.loads(text) if text else {}

    def run(self, prompt: dict, timeout: float = 900, interrupt_at: tuple[str, int] | None = None) -> Run:
        """Queue ``prompt`` and follow it to its end; ``interrupt_at=(node, value)`` presses Cancel once that
        node's progress reaches ``value``."""
        return asyncio.run(self._run(prompt, timeout, interrupt_at))

    async def _run(self, prompt, timeout, interrupt_at) -> Run:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}") as ws:
                start = time.monotonic()
                code, answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
                if code != 200:
                    return Run("", "rejected", json.dumps(answer))
                run = Run(answer["prompt_id"])
                try:
                    await asyncio.wait_for(self._follow(ws, run, interrupt_at), timeout)
                except asyncio.TimeoutError:
                    run.status = "timeout"
                    self.post("/interrupt")
                run.seconds = time.monotonic() - start
        run.history = self.history(run.prompt_id)
        return run

    def history(self, prompt_id: str, timeout: float = 30) -> dict:
        """The prompt's /history entry; the server writes it just after the websocket's last message."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry or time.monotonic() > deadline:
                return entry or {}
            time.sleep(0.2)

    async def _follow(self, ws, run: Run, interrupt_at) -> None:
        import aiohttp

        pressed = False
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                run.previews += 1
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            kind, data = event["type"], event.get("data", {})
            if data.get("prompt_id") not in (None, run.prompt_id):
                continue
            if kind == "progress":
                run.progress.setdefault(str(data["node"]), []).append(data["value"])
                if interrupt_at and not pressed and str(data["node"]) == interrupt_at[0] and data["value"] >= interrupt_at[1]:
                    self.post("/interrupt")
                    pressed = True
            elif kind == "executed":
                run.executed[str(data["node"])] = data.get("output")
            elif kind == "execution_success":
                run.status = "success"
                return
            elif kind == "execution_error":
                run.status, run.error = "error", str(data.get("exception_message", "")).strip()
                return
            elif kind == "execution_interrupted":
                run.status = "interrupted"
                return


# --- the checks -----------------------------------------------------------------------------------------------
class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
        if not ok:
            self.failed.append(what)
        return ok


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "(missing)"


def node_of(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def lora_config(path: Path) -> dict:
    """The TrainConfig a LoRA file records (its metadata's byg.config)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return json.loads(handle.metadata()["byg.config"])


def lora_steps(path: Path) -> int:
    return lora_config(path)["steps"]


def describe(run: Run) -> str:
    progress = {node: f"{len(v)} msgs, {v[0]}..{v[-1]}" for node, v in run.progress.items()}
    return f"{run.status} in {run.seconds:.0f} s; progress {progress}; {run.previews} previews" + (
        f"; error: {run.error}" if run.error else "")


def read_back(png: Path) -> str:
    """The toy world's own reading of an edited scene (kind, shape colour, background colour)."""
    sys.path.insert(0, str(PACK))
    import numpy as np
    import torch
    from PIL import Image

    from byg_core.toy.metrics import read_scene

    pixels = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    reading = read_scene(torch.nn.functional.interpolate(pixels[None], size=(16, 16), mode="area")[0])
    return f"{reading.shape_color} {reading.shape} on {reading.bg_color}"


def _frames_of(path: Path) -> int:
    """Frames of a video file (PyAV, which ComfyUI requires)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def smoke(server: Server, base: Path, check: Checks, extra_steps: int) -> None:
    info = server.get("/object_info")
    check(PACK_NODES <= set(info), f"the pack's {len(PACK_NODES)} nodes are listed by /object_info")
    failed = [line for line in server.log_tail(10_000).splitlines() if "IMPORT FAILED" in line and PACK_LINK in line]
    check(not failed, "ComfyUI logs no IMPORT FAILED for the pack")
    templates = server.get("/workflow_templates").get(PACK_LINK, [])
    check({p.stem for p in WORKFLOWS.glob("*.json")} <= set(templates), f"templates listed: {sorted(templates)}")

    prompts = {}
    for path in sorted(WORKFLOWS.glob("*.json")):
        try:
            prompts[path.name] = ui_to_api(json.loads(path.read_text()), info)
            check(True, f"{path.name} converts to an API prompt ({len(prompts[path.name])} nodes)")
        except ValueError as error:
            check(False, f"{path.name} converts to an API prompt: {error}")
    image = prompts.get(TOY_IMAGE)
    if image is None:
        return
    loras = base / "models" / "loras"
    trainer = node_of(image, "CycleTrainer")
    save_name = image[trainer]["inputs"]["save_name"]
    steps = image[trainer]["inputs"]["steps"]
    finished = loras / f"{save_name}.safetensors"

    print(f"\n[1] {TOY_IMAGE} as shipped")
    run = server.run(image)
    print(f"  {describe(run)}")
    check(run.status == "success" and run.history.get("status", {}).get("status_str") == "success",
          "the toy image workflow succeeds (/history says success)")
    check(len(run.progress.get(trainer, [])) >= (steps if steps > 0 else 1), "CycleTrainer sent a progress message per step")
    check(run.previews >= 1, f"preview images arrived over the websocket ({run.previews})")
    check(bool(run.executed.get(trainer, {}) and run.executed[trainer].get("images")), "CycleTrainer shows its loss curve")
    saved = [base / "output" / i.get("subfolder", "") / i["filename"]
             for out in run.history.get("outputs", {}).values() for i in out.get("images", []) if i.get("type") == "output"]
    check(bool(saved) and all(p.is_file() for p in saved), f"the edited image is written: {[p.name for p in saved]}")
    check(finished.is_file(), f"the LoRA is saved as {finished.relative_to(base)}")
    if saved:
        print(f"  edited scene reads back as: {read_back(saved[0])} (source: red circle on blue; instruction: the circle green)")
    before = sha256(finished)

    print("\n[1b] another source scene (upstream of the trainer, so ComfyUI runs it again), resume off")
    scene = json.loads(json.dumps(image))
    scene[node_of(scene, "BYGToyScene")]["inputs"]["shape"] = "square"
    run = server.run(scene)
    print(f"  {describe(run)}")
    check(run.status == "success", "the same finished run is returned, not refused")
    check(not run.progress.get(trainer), "nothing was trained again (no progress messages)")
    check(sha256(finished) == before, "the finished LoRA is byte-identical")

    print("\n[2] the same graph again, resume off (a fresh run under a taken save_name)")
    again = json.loads(json.dumps(image))
    again[trainer]["inputs"]["seed"] = 1  # a changed input, so ComfyUI runs the trainer again
    run = server.run(again)
    print(f"  {describe(run)}")
    check(run.status == "error" and "already names a run" in run.error, "refused, naming 'resume' and 'save_name'")
    check(sha256(finished) == before, "the finished LoRA is byte-identical")

    total = (steps if steps > 0 else lora_steps(finished)) + extra_steps
    cancel_at = total - extra_steps + extra_steps // 3
    print(f"\n[3] resume with steps={total}, Cancel at step {cancel_at}")
    more = json.loads(json.dumps(image))
    more[trainer]["inputs"].update(resume=True, steps=total)
    run = server.run(more, interrupt_at=(trainer, cancel_at))
    print(f"  {describe(run)}")
    values = run.progress.get(trainer, [])
    check(run.status == "interrupted", "the run is interrupted")
    # the trainer stops after the step it is in when Cancel arrives: its partial LoRA names that step
    partials = sorted(loras.glob(f"{save_name}_step*.safetensors"))
    stopped_at = int(partials[-1].stem.rsplit("_step", 1)[1]) if partials else -1
    check(len(partials) == 1 and values and values[-1] <= stopped_at < total and lora_steps(partials[0]) == stopped_at,
          f"the partial LoRA is {[p.name for p in partials]} (progress reached {values[-1:]}), its config says "
          f"steps={stopped_at}")
    check(sha256(finished) == before, "the finished LoRA is byte-identical after the cancelled rerun")

    print("\n[4] queue again: resume continues")
    run = server.run(more)
    print(f"  {describe(run)}")
    values = run.progress.get(trainer, [])
    check(run.status == "success", "the resumed run succeeds")
    check(bool(values) and values[0] == stopped_at + 1 and values[-1] == total,
          f"the step count continues: {values[:1]}..{values[-1:]} after step {stopped_at}")
    check(finished.is_file() and lora_steps(finished) == total, f"{finished.name} now holds {total} steps")
    kept = loras / f"{save_name}_step{total - extra_steps}.safetensors"
    check(kept.is_file() and sha256(kept) == before, f"the {total - extra_steps}-step LoRA is kept, byte for byte, "
          f"as {kept.name}")

    print("\n[5] a train-only graph (model, dataset, objective, CycleTrainer), with a cosine learning-rate schedule")
    keep = {k for k, v in image.items() if v["class_type"] in ("BYGModelLoader", "BYGToyDataset", "DirectionalPriorLoss",
                                                                 "CycleTrainer")}
    only = {k: {**v, "inputs": {n: x for n, x in v["inputs"].items() if not (isinstance(x, list) and x[0] not in keep)}}
            for k, v in image.items() if k in keep}
    only[trainer]["inputs"].update(steps=4, warmup_identity_steps=2, preview_every=0, save_name="smoke_train_only",
                                   lr_scheduler="cosine", lr_warmup_steps=1)
    run = server.run(only)
    print(f"  {describe(run)}")
    check(run.status == "success", "accepted by /prompt and trained")
    saved = loras / "smoke_train_only.safetensors"
    check(saved.is_file(), "its LoRA is saved")
    schedule = {k: lora_config(saved).get(k) for k in ("lr_scheduler", "lr_warmup_steps")} if saved.is_file() else None
    check(schedule == {"lr_scheduler": "cosine", "lr_warmup_steps": 1}, f"it trained with the widgets' schedule: {schedule}")

    print("\n[5b] the same graph with another dataset seed into the same dataset folder")
    dataset = node_of(only, "BYGToyDataset")
    folder = base / "output" / "byg" / "datasets" / only[dataset]["inputs"]["name"]
    before = {path.name: path.read_bytes() for path in folder.iterdir()} if folder.is_dir() else {}
    only[dataset]["inputs"]["seed"] += 1
    only[trainer]["inputs"]["save_name"] = "smoke_other_seed"
    run = server.run(only)
    print(f"  {describe(run)}")
    check(run.status == "error" and "nothing was overwritten" in run.error and "'name' widget" in run.error,
          "refused, naming the folder and the 'name' widget")
    check(bool(before) and {path.name: path.read_bytes() for path in folder.iterdir()} == before,
          f"{folder.name}/ keeps its {len(before)} files byte for byte")

    video = prompts.get(TOY_VIDEO)
    if video is not None:
        print(f"\n[6] {TOY_VIDEO} (.mp4 clips written to input/toy_video, one copied to input/{TOY_CLIP})")
        run = server.run(video)
        print(f"  {describe(run)}")
        check(run.status == "success", "the toy video workflow succeeds (LoadVideo -> BYGVideoEdit -> SaveVideo)")
        video_trainer = node_of(video, "CycleTrainer")
        check(len(run.progress.get(video_trainer, [])) >= 1, "its CycleTrainer sent progress")
        name = video[video_trainer]["inputs"]["save_name"]
        check((loras / f"{name}.safetensors").is_file(), f"its LoRA is saved as {name}.safetensors")
        written = sorted((base / "output").rglob("byg_toy_video_edit*.mp4"))
        frames = _frames_of(written[-1]) if written else None
        check(frames == _frames_of(base / "input" / TOY_CLIP),
              f"SaveVideo wrote the edit as {[p.name for p in written]}, {frames} frames like the source clip")


def stock_lora_loading(comfy: Path, python: str, check: Checks) -> None:
    """Stock ComfyUI's LoRA loader applies the pack's files exactly (``comfy_lora_check.py``, in ComfyUI's Python)."""
    run = subprocess.run([python, str(PACK / "scripts" / "comfy_lora_check.py"), "--comfy", str(comfy)],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(PACK)))
    print("".join(line + "\n" for line in run.stdout.splitlines() if line.startswith(("  ", "FAIL"))), end="")
    check(run.returncode == 0, "stock ComfyUI's LoRA loader applies the pack's FLUX and Wan2.2 LoRA files exactly, "
          "default and all-linear targets (comfy_lora_check.py)" + (f": {run.stderr[-2000:]}" if run.returncode else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", default=os.environ.get("BYG_COMFY_DIR"),
                        help="a ComfyUI checkout (default: $BYG_COMFY_DIR); without one the test is skipped")
    parser.add_argument("--python", default=os.environ.get("BYG_COMFY_PYTHON", sys.executable),
                        help="the Python that runs ComfyUI (default: $BYG_COMFY_PYTHON, else this one)")
    parser.add_argument("--work", default=None, help="scratch base folder (default: a new temporary folder)")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--extra-steps", type=int, default=30, help="steps the cancel-and-resume runs add")
    args = parser.parse_args(argv)
    if not args.comfy:
        print("comfy_smoke: SKIPPED: no ComfyUI checkout given (--comfy DIR or BYG_COMFY_DIR); nothing was run")
        return 0
    comfy = Path(args.comfy).resolve()
    if not (comfy / "main.py").is_file():
        print(f"comfy_smoke: {comfy} is not a ComfyUI checkout (no main.py)", file=sys.stderr)
        return 2
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("comfy_smoke: run this script with ComfyUI's Python: it needs aiohttp, which ComfyUI requires",
              file=sys.stderr)
        return 2
    base = Path(args.work or tempfile.mkdtemp(prefix="byg-comfy-smoke-")).resolve()
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK
    if not link.exists():
        link.symlink_to(PACK, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(PACK))
    subprocess.run([args.python, "-m", "byg_core.toy.video", "--out", str(base / "input" / "toy_video"), "--n", "8",
                    "--mp4"], check=True, env=env, stdout=subprocess.DEVNULL)
    shutil.copyfile(base / "input" / "toy_video" / "00000.mp4", base / "input" / TOY_CLIP)
    print(f"ComfyUI {comfy}, Python {args.python}, scratch base folder {base}")
    server = Server(comfy, args.python, base, args.port or free_port())
    check = Checks()
    start = time.monotonic()
    try:
        stock_lora_loading(comfy, args.python, check)
        server.start()
        smoke(server, base, check, args.extra_steps)
    except Exception as error:  # a broken server or script is a failed check, with the server's words
        check(False, f"the smoke test ran to its end: {type(error).__name__}: {error}")
        print(server.log_tail())
    finally:
        server.stop()
    print(f"\n{len(check.failed)} failed in {time.monotonic() - start:.0f} s" + "".join(f"\n  {f}" for f in check.failed))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
