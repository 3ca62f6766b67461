"""``byg bench speed``: what a ByG step costs against a supervised step, from one interleaved run.

Builds a backbone (the toy base; a FLUX-architecture config of a given width; or full-size FLUX.1-dev
from its shipped config with random weights, for a GPU), trains on random cached latents and text, and
reports per step: time (best of interleaved repeats), FLOPs (``torch.utils.flop_counter``), peak memory
(CUDA max allocated on a GPU; the step's peak RSS on the CPU) and their ByG / supervised ratios; where a
ByG step's time goes (rollout, editor passes, base queries, backward: ``torch.profiler`` labels the step
sets); and a 20-step edit against the same backbone's plain 20-step sampling.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbones.base import TextCond
from .safefiles import write_text_atomic

PHASES = ("byg.rollout", "byg.identity", "byg.forward", "byg.base", "byg.reverse", "byg.backward", "byg.optimizer")


class RandomText:
    """Stands for a model's text encoder: a fixed random conditioning per prompt, of the model's shapes."""

    def __init__(self, tokens: int, width: int, pooled: int | None, device, dtype) -> None:
        self.shape, self.device, self.dtype = (tokens, width, pooled), device, dtype

    def __call__(self, prompts):
        tokens, width, pooled = self.shape
        conds = []
        for prompt in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, prompt)))
            vector = None if pooled is None else torch.randn(1, pooled, generator=g).to(self.device, self.dtype)
            conds.append(TextCond(torch.randn(1, tokens, width, generator=g).to(self.device, self.dtype), vector))
        return TextCond.cat(conds)


class LatentsOnly:
    """No VAE: the bench trains on latents directly (the VAE's cost is outside a training step)."""

    def __init__(self, spatial_factor: int = 8, temporal_factor: int = 1) -> None:
        self.spatial_factor, self.temporal_factor = spatial_factor, temporal_factor

    def encode(self, pixels):
        return pixels

    def decode(self, latents):
        return latents


def flux_backbone(width: int | None, device: str, storage: str = "bf16"):
    """FLUX.1-dev's architecture with random weights: full size (``width=None``) or ``width`` wide, 2 + 2 blocks."""
    from diffusers import FluxTransformer2DModel

    from .backbones.flux import FluxBackbone
    from .loading import shipped_config, store_in_fp8

    config = shipped_config("flux1-dev", "transformer")
    if width is not None:
        config |= dict(num_layers=2, num_single_layers=2, attention_head_dim=64, num_attention_heads=max(1, width // 64),
                       joint_attention_dim=width, pooled_projection_dim=width, axes_dims_rope=[8, 28, 28])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random weights made where they run: a 12B model inits in seconds on a GPU
        model = FluxTransformer2DModel(**config).to(dtype).requires_grad_(False)
    if storage == "fp8":
        store_in_fp8(model, "float8_e4m3fn", dtype)
    text = RandomText(64 if width else 512, config["joint_attention_dim"], config["pooled_projection_dim"], device, dtype)
    return FluxBackbone(model, text, LatentsOnly(), scheduler_config=shipped_config("flux1-dev", "scheduler"))


# bench name -> the shipped model it builds; "-expert": one A14B expert alone
WAN_BENCH = {"wan2.2-ti2v-5b": "wan2.2-ti2v-5b", "wan2.2-a14b-expert": "wan2.2-t2v-a14b"}


def wan_backbone(name: str, device: str, storage: str = "bf16"):
    """Wan2.2's architecture with random weights: full-size TI2V-5B, one full-size A14B expert, or ``wan-<width>``
    (TI2V-5B's layout that wide, 2 blocks)."""
    from diffusers import WanTransformer3DModel

    from .backbones.wan import WAN22_VARIANTS, WanBackbone
    from .loading import WAN_FP8_SKIP, WAN_MODELS, cast_keeping_fp32, shipped_config, store_in_fp8

    model = WAN_BENCH.get(name, "wan2.2-ti2v-5b")
    spec = WAN22_VARIANTS[WAN_MODELS[model][0]]
    config = shipped_config(model, "transformer")
    if name not in WAN_BENCH:
        width = int(name.removeprefix("wan-"))
        config |= dict(num_layers=2, num_attention_heads=max(1, width // 128), ffn_dim=4 * width, text_dim=width)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        transformer = cast_keeping_fp32(WanTransformer3DModel(**config), dtype).requires_grad_(False)
    if storage == "fp8":
        store_in_fp8(transformer, "float8_e4m3fn", dtype, WAN_FP8_SKIP)
    text = RandomText(512 if name in WAN_BENCH else 64, config["text_dim"], None, device, dtype)
    # one expert serves every t: the A14B bench measures one expert's step, as a GPU that holds one would run it
    return WanBackbone(transformer, codec=LatentsOnly(spec.vae_spatial_factor, spec.vae_temporal_factor),
                       text_encoder=text, expand_timesteps=spec.expand_timesteps, flow_shift=spec.flow_shift)


@dataclass
class Measurement:
    seconds: float
    flops: int
    peak_bytes: int
    phases: dict[str, float] = field(default_factory=dict)


@contextmanager
def _cuda_peak():
    """CUDA's max allocated during the block, above what was allocated before it."""
    box = [0]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    yield box
    torch.cuda.synchronize()
    box[0] = torch.cuda.max_memory_allocated() - base


def _rss(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


PEAK_POLL_SECONDS = 5.0  # how often the wait for the peak-measuring process looks whether it is still alive
PEAK_TIMEOUT_SECONDS = 1800  # and how long it waits for a process that lives on without measuring


def _first_step_rss(model: str, size: int, batch: int, rank: int, method: str, out: str, queue, width=None,
                    frames: int = 17, storage: str = "bf16") -> None:
    """In a fresh process: the peak RSS a first training step adds (a warm process reuses freed memory, which
    would hide a step's peak)."""
    backbone = build(model, "cpu", storage)
    trainer = _trainer(backbone, _data(backbone, model, size, batch, "cpu", width, frames), model, method, batch, rank, "cpu", out)
    base = _rss("VmRSS")
    trainer.train_step()
    queue.put(_rss("VmHWM") - base)


def cpu_step_peak(model: str, size: int, batch: int, rank: int, method: str, out: str, width=None, frames=17,
                  storage: str = "bf16") -> int:
    """``_first_step_rss`` in a fresh process, on the model as stored (fp8 or not); a process that dies is named."""
    import multiprocessing
    from queue import Empty

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_first_step_rss,
                              args=(model, size, batch, rank, method, out, queue, width, frames, storage))
    process.start()
    waited = 0.0
    while True:
        try:
            peak = queue.get(timeout=PEAK_POLL_SECONDS)
            break
        except Empty:
            waited += PEAK_POLL_SECONDS
            if not process.is_alive():
                raise RuntimeError(f"the process measuring the CPU peak ended with exit code {process.exitcode} "
                                   "before it measured (its error is printed above)") from None
            if waited >= PEAK_TIMEOUT_SECONDS:
                process.kill()
                raise RuntimeError(f"the process measuring the CPU peak measured nothing in {waited:.0f} s") from None
    process.join()
    return peak


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_seconds(trainer, device: str) -> float:
    _synchronize(device)
    start = time.perf_counter()
    trainer.train_step()
    _synchronize(device)
    return time.perf_counter() - start


def measure(trainer, device: str) -> Measurement:
    """One step's FLOPs, CUDA peak memory and phase times (its time is taken interleaved, by ``run_speed``; the
    CPU's peak in a fresh process, by ``cpu_step_peak``)."""
    from torch.utils.flop_counter import FlopCounterMode

    peak = [0]
    if device == "cuda":
        with _cuda_peak() as peak:
            trainer.train_step()
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    # host time of each range: on CUDA the kernels' launches, not their run (asynchronous; and a range's device time
    # misses the backward's kernels, which autograd launches from its own thread)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        trainer.train_step()
    phases = {}
    for event in profile.key_averages():
        if event.key in PHASES:
            phases[event.key.removeprefix("byg.")] = event.cpu_time_total / 1e6
    return Measurement(0.0, counter.get_total_flops(), peak[0], phases)


def rollout_flops(trainer) -> int:
    """FLOPs of one ByG step's EMA rollout alone: what a rollout cache can save at most."""
    from torch.utils.flop_counter import FlopCounterMode

    from .bootstrap import bootstrap_rollout

    batch = trainer.data.batch(trainer.backbone, list(range(trainer.cfg.batch_size)))
    g = torch.Generator().manual_seed(0)
    t = torch.rand(trainer.cfg.batch_size, generator=g).to(batch.x.device)
    eps = torch.randn(batch.x.shape, generator=g).to(batch.x)
    with FlopCounterMode(display=False) as counter, trainer.accelerator.autocast():
        bootstrap_rollout(trainer.G, batch.x, batch.c, eps, t, trainer.cfg.objective.rollout_steps)
    return counter.get_total_flops()


def _data(backbone, model: str, size: int, batch: int, device: str, width: int | None = None, frames: int = 17):
    from .data import CachedEdits, EditRecord

    prompts = ("change the circle's colour to green", "change the circle's colour to red")
    captions = ("a red circle on a blue background", "a green circle on a blue background")
    if model == "toy":
        shape = (3, 16, 16)
    elif _is_wan(model):
        codec, channels = backbone.codec, next(iter(backbone.transformers.values())).config.in_channels
        sf = codec.spatial_factor
        shape = (channels, (frames - 1) // codec.temporal_factor + 1, size // sf, (width or size) // sf)
    else:
        shape = (16, size // 8, (width or size) // 8)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(max(batch, 2), *shape, generator=g) * 2 - 1).to(device, backbone.dtype)
    records = [EditRecord(Path(f"{i}.png"), captions[i % 2], prompts[i % 2], captions[1 - i % 2], prompts[1 - i % 2])
               for i in range(len(x))]
    return CachedEdits(x=x, records=records, y=x.flip(-1))


def _trainer(backbone, data, model: str, method: str, batch: int, rank: int, device: str, out: str, reuse: int = 1):
    from .config import TrainConfig
    from .train import Trainer, accelerator_for

    cfg = TrainConfig(model=model, output_dir=str(Path(out) / f"{method}{reuse}"), method=method, steps=10**9,
                      batch_size=batch, rollout_reuse=reuse,
                      rank=rank, warmup_identity_steps=0, identity_prob=0.0, checkpoint_every=0,
                      mixed_precision="bf16" if device == "cuda" else "no",
                      gradient_checkpointing=model == "flux1-dev" or model in WAN_BENCH)
    return Trainer(cfg, backbone, data, accelerator=accelerator_for(device, cfg.mixed_precision))  # on --device


def build(model: str, device: str, storage: str = "bf16"):
    """``toy``, ``flux-<width>`` (FLUX.1's architecture, that wide, 2 + 2 blocks) or ``flux1-dev`` (full size)."""
    if model == "toy":
        from .toy.model import build_toy_backbone

        return build_toy_backbone()
    if model == "flux1-dev":
        return flux_backbone(None, device, storage)
    if model.startswith("flux-") and model[5:].isdigit():
        return flux_backbone(int(model[5:]), device, storage)
    if _is_wan(model):
        return wan_backbone(model, device, storage)
    raise ValueError(f"--model must be toy, flux-<width> (e.g. flux-256), flux1-dev, wan-<width> (e.g. wan-256), "
                     f"{' or '.join(WAN_BENCH)}, got {model!r}")


def check_bench(model: str, size: int, width: int | None, frames: int, device: str = "cpu") -> None:
    """Before anything is built: the device it times on, a model name whose width its heads divide, and the sizes
    (and Wan's frames) the model takes, each refusal naming its flag (they had failed after building, or run other
    sizes than reported)."""
    if device not in ("cpu", "cuda"):  # it synchronises and measures peaks on those two
        raise ValueError(f"--device {device}: the speed bench times on cpu or cuda (the current GPU; pick another "
                         "with CUDA_VISIBLE_DEVICES)")
    from .backbones.base import PixelShapeError
    from .backbones.flux import check_flux_pixels
    from .backbones.wan import WAN22_VARIANTS, check_wan_pixels
    from .loading import WAN_MODELS, shipped_config

    for prefix, head in (("flux-", 64), ("wan-", 128)):
        if model.startswith(prefix) and model[len(prefix):].isdigit() and (int(model[len(prefix):]) % head
                                                                            or not int(model[len(prefix):])):
            raise ValueError(f"--model {model}: a width divisible by {head} (its attention heads' size), e.g. "
                             f"{prefix}{max(head, int(model[len(prefix):]) // head * head)}")
    if model == "toy":
        return
    try:
        if _is_wan(model):
            shipped = WAN_BENCH.get(model, "wan2.2-ti2v-5b")
            spec = WAN22_VARIANTS[WAN_MODELS[shipped][0]]
            check_wan_pixels((1, 3, frames, size, width or size), shipped_config(shipped, "transformer")["patch_size"],
                             spec.vae_spatial_factor, spec.vae_temporal_factor)
        else:
            check_flux_pixels((1, 3, size, width or size), 8)
    except PixelShapeError as error:
        flags = {"frames": f"--frames {frames}", "height": f"--size {size}",
                 "width": f"--width {width}" if width else f"--size {size}"}
        named = ", ".join(dict.fromkeys(flags[d] for d in sorted(error.dimensions, reverse=True)))
        raise ValueError(f"{named}: {error}") from None


def _is_wan(model: str) -> bool:
    return model in WAN_BENCH or (model.startswith("wan-") and model[4:].isdigit())


def run_speed(model: str = "toy", size: int = 512, batch: int = 8, device: str = "cpu", repeats: int = 3,
              rank: int = 16, storage: str = "bf16", out: Path | None = None, width: int | None = None,
              frames: int = 17, cache_k: int = 4) -> dict:
    """Supervised vs ByG steps of one backbone, interleaved; prints the report, returns (and writes) its figures."""
    import json

    from .adapters import BASE, EMA, Adapters, LoraSpec
    from .sample import edit, initial_noise, integrate

    check_bench(model, size, width, frames, device)
    backbone = build(model, device, storage)
    for transformer in backbone.transformers.values():
        transformer.to(device)
    data = _data(backbone, model, size, batch, device, width, frames)
    folder = str(Path(out or "out/speed"))
    trainers = {}
    for method in ("supervised", "byg"):
        trainers[method] = _trainer(backbone, data, model, method, batch, rank, device, folder)
        trainers[method].train_step()  # warm-up
    # the rollout cache's step is amortised: the mean of cache_k consecutive steps, once its entries are made
    cached = _trainer(backbone, data, model, "byg", batch, rank, device, folder, reuse=cache_k)
    for _ in range(cache_k):
        cached.train_step()
    times = {method: [] for method in trainers}
    cache_times = []
    for _ in range(repeats):  # interleaved, so a slower moment of the machine hits both
        for method, trainer in trainers.items():
            times[method].append(step_seconds(trainer, device))
        cache_times.append(sum(step_seconds(cached, device) for _ in range(cache_k)) / cache_k)
    figures = {method: measure(trainer, device) for method, trainer in trainers.items()}
    no_rollout_flops = figures["byg"].flops - rollout_flops(trainers["byg"])
    for method in figures:
        figures[method].seconds = min(times[method])
        if device == "cpu":
            figures[method].peak_bytes = cpu_step_peak(model, size, batch, rank, method, folder, width, frames, storage)

    adapters = Adapters(backbone, LoraSpec(rank, float(rank), tuple(backbone.lora_target_modules())))
    x = data.x[:1]
    c = backbone.encode_text([data.records[0].instruction])
    _synchronize(device)
    start = time.perf_counter()
    edit(backbone, adapters, x, c, steps=20, role=EMA)
    _synchronize(device)
    edit_s = time.perf_counter() - start
    start = time.perf_counter()
    with adapters.use(BASE):
        integrate(backbone.schedule(20, x.shape, x.device), lambda y, t: backbone.velocity(y, t, c),
                  initial_noise(x.shape, 0, x.device, x.dtype))
    _synchronize(device)
    sample_s = time.perf_counter() - start

    sup, byg = figures["supervised"], figures["byg"]
    report = {
        "model": model, "size": size if model != "toy" else 16, "width": (width or size) if model != "toy" else 16, "frames": frames if _is_wan(model) else None,
        "batch": batch, "device": device, "rank": rank,
        "storage": storage, "repeats": repeats,
        "supervised_s": sup.seconds, "byg_s": byg.seconds, "time_ratio": byg.seconds / sup.seconds,
        "time_ratio_cache": min(cache_times) / sup.seconds, "cache_k": cache_k, "byg_cache_s": min(cache_times),
        "flop_ratio": byg.flops / sup.flops,
        # a ByG step without its rollout: the floor of any rollout cache, whatever its K
        "flop_ratio_no_rollout": no_rollout_flops / sup.flops,
        "supervised_gflop": sup.flops / 1e9, "byg_gflop": byg.flops / 1e9,
        "memory_ratio": byg.peak_bytes / max(sup.peak_bytes, 1), "supervised_peak_mib": sup.peak_bytes / 2**20,
        "byg_peak_mib": byg.peak_bytes / 2**20, "byg_phases_s": byg.phases,
        "float32_matmul_precision": torch.get_float32_matmul_precision(), "edit_20_steps_s": edit_s,
        "sample_20_steps_s": sample_s,
    }
    shown = f"{report['size']}x{report['width']}" + (f"x{frames} frames" if _is_wan(model) else "")
    print(f"{model} ({shown} px, batch {batch}, rank {rank}, {device}): supervised {sup.seconds * 1e3:.1f} ms, "
          f"ByG {byg.seconds * 1e3:.1f} ms -> time ratio {report['time_ratio']:.2f}x (rollout cache K={cache_k}: "
          f"{report['time_ratio_cache']:.2f}x), FLOP ratio "
          f"{report['flop_ratio']:.2f}x (without the rollout, any cache's floor: "
          f"{report['flop_ratio_no_rollout']:.2f}x), "
          f"peak memory {report['supervised_peak_mib']:.0f} vs "
          f"{report['byg_peak_mib']:.0f} MiB -> {report['memory_ratio']:.2f}x")
    total = sum(byg.phases.values()) or 1.0
    print(f"ByG step phases (profiled once, host time{': on CUDA the kernel launches' if device == 'cuda' else ''}): "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in byg.phases.items()))
    print(f"edit 20 steps {edit_s:.2f} s vs plain sampling 20 steps {sample_s:.2f} s ({edit_s / sample_s:.2f}x)")
    if out is not None:
        write_text_atomic(Path(out) / "speed.json", json.dumps(report, indent=2))
    return report
