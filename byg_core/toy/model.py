"""The toy base model: a text-to-image flow model of the real FLUX architecture at toy size.

diffusers' ``FluxTransformer2DModel`` with a tiny config draws the toy world's 16 x 16
scenes from their captions. Latents are pixels in [-1, 1] (``ToyCodec``), packed 2 x 2
into 64 tokens of 12 channels; the text is ``ToyTextEncoder``. ``pretrain`` makes it
from a seed by plain flow matching (section 3: x_t = (1 - t) x + t eps, target eps - x)
on freshly rendered scenes of the whole world, UNSEEN_COMBOS included: the base knows the
whole world, as FLUX knows the real one; only ByG's editing tuples hold combinations out.

One safetensors file is the whole base model: the transformer under ``transformer.``, the
text encoder's buffers under ``text_encoder.``, and both configs in the JSON metadata.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel

from byg_core.backbones.flux import FluxBackbone
from byg_core.objective import (
    ObjectiveConfig,
    directional_loss,
    directional_prior_loss,
    noise,
    one_step_prediction,
    supervised_edit_loss,
    velocity_target,
)
from byg_core.safefiles import load_checked, meta_json, save_atomic
from byg_core.sample import guided_velocity, initial_noise, integrate
from byg_core.timesteps import TIMESTEP_SAMPLERS
from byg_core.toy.codec import ToyCodec
from byg_core.toy.metrics import read_scene
from byg_core.toy.text import ToyTextEncoder
from byg_core.toy.world import (
    DEFAULT_RESOLUTION,
    UNSEEN_COMBOS,
    caption,
    edit_family,
    random_scene,
    render_batch,
    sample_scenes,
    sample_tuples,
)

FORMAT = "byg-toy-base"
FORMAT_VERSION = 1
DEFAULT_TOY_WEIGHTS = Path(__file__).resolve().parent / "assets" / "toy_base.safetensors"
TOY_RESOLUTION = DEFAULT_RESOLUTION  # 16 px: 8 x 8 = 64 tokens after 2 x 2 packing

TOY_FLUX_CONFIG: dict = dict(
    patch_size=1,  # FLUX packs 2x2 outside the transformer (pack_latents), as diffusers does
    in_channels=12,  # 3 latent channels x 2x2 packing
    out_channels=12,
    num_layers=2,  # double-stream (MM-DiT) blocks
    num_single_layers=2,  # single-stream blocks
    attention_head_dim=32,  # wide heads: more RoPE frequencies per axis (see axes_dims_rope)
    num_attention_heads=2,  # inner dim 64
    joint_attention_dim=64,  # = ToyTextEncoder dim
    pooled_projection_dim=64,  # = ToyTextEncoder pooled_dim
    guidance_embeds=False,  # no CFG distillation: ByG needs no guidance, like FLUX.1-schnell
    # [index, row, col], summing to attention_head_dim. diffusers fixes RoPE theta at 10000,
    # so an axis of d dims gets d/2 frequencies 10000^(-2k/d): 14 dims give 7 from 1 to 3e-4
    # rad per token, enough to tell apart all 8 rows and columns (6 dims would give 3).
    axes_dims_rope=[4, 14, 14],
)
# Base sizes: (inner width, blocks of each kind). "small" is TOY_FLUX_CONFIG, the shipped base (466k parameters);
# the larger ones keep 32-wide heads (so the RoPE axes above still fit) and are for a GPU (docs/toy_bench.md):
# "medium" 128 wide, 3 + 3 blocks (2.6M parameters); "large" 256 wide, 4 + 4 blocks (13.8M).
BASE_SIZES: dict[str, tuple[int, int]] = {"small": (64, 2), "medium": (128, 3), "large": (256, 4)}
TOY_TEXT_CONFIG: dict = dict(dim=64, pooled_dim=64, max_length=16, seed=0)
# The shipped base: 20000 steps at batch 32 (33-38 min on one CPU core). Pretraining length is what made it
# draw better on a CPU budget (docs/toy_bench.md, issue 17 probes): shape kinds read back right 0.37 (900
# steps), 0.59 (7000), 0.78 (20000); the medium base (5.6x the compute per step) drew 0.78 at 7000 steps;
# the sampler's step count (10-100) changed nothing.
PRETRAIN_STEPS = 20000
# The shipped medium base, toy_base_medium.safetensors (not the demo's: 3.5x the CPU time per step): 7000 steps at
# batch 32 (about an hour on one core; `byg toy pretrain --base-size medium`), then continued with a tenth of the
# captions dropped (SHIPPED_MEDIUM_CONTINUATION: `byg toy pretrain --init THAT --steps 2000 --lr 5e-4 --p-uncond 0.1`,
# 18 min), so that it also has the unconditional velocity classifier-free guidance needs: guided at 8 its samples
# read back right 0.95, and the supervised reference on it passes 0.9 clean edits at the bench's budget with its
# tuned settings (docs/toy_bench.md, issue 17 part 2); `byg bench --base-size medium` benches on it.
SHIPPED_PRETRAIN_STEPS = {"small": PRETRAIN_STEPS, "medium": 7000}
SHIPPED_MEDIUM_CONTINUATION = dict(steps=2000, lr=5e-4, p_uncond=0.1)
PRETRAIN_LR = 2e-3  # peak; linear warm-up, then cosine decay to a tenth (_learning_rate)

Progress = Callable[[int, dict], None]


def toy_flux_config(size: str = "small") -> dict:
    """The transformer config of the base size ``size`` (BASE_SIZES); "small" is TOY_FLUX_CONFIG."""
    if size not in BASE_SIZES:
        raise ValueError(f"base size {size!r} is not one of {', '.join(BASE_SIZES)}")
    width, blocks = BASE_SIZES[size]
    heads = width // TOY_FLUX_CONFIG["attention_head_dim"]
    return TOY_FLUX_CONFIG | dict(num_attention_heads=heads, num_layers=blocks, num_single_layers=blocks)


def base_weights(size: str = "small") -> Path:
    """Where the base of ``size`` lives by default: the shipped file for "small", toy_base_<size> beside it (shipped
    for "medium"; "large" is made by `byg toy pretrain --base-size large`, on a GPU)."""
    toy_flux_config(size)  # refuses an unknown size
    return DEFAULT_TOY_WEIGHTS if size == "small" else DEFAULT_TOY_WEIGHTS.with_name(f"toy_base_{size}.safetensors")


def pretrain_record(weights: str | os.PathLike) -> dict:
    """How the base in ``weights`` was trained: its metadata's ``pretrain`` entry (``pretrain``'s report)."""
    return meta_json(load_checked(weights, "toy base model")[1], "pretrain", weights)


def has_unconditional(record: dict) -> bool:
    """Whether a base whose ``pretrain_record`` is ``record`` was last trained with dropped captions
    (``pretrain(p_uncond > 0)``), so that it has the unconditional velocity classifier-free guidance needs."""
    return bool(record.get("p_uncond"))


def _build(config: dict, text_config: dict, positions: str, seed: int) -> FluxBackbone:
    """A backbone with freshly initialised weights, deterministic from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**config)
    return FluxBackbone(transformer, ToyTextEncoder(**text_config), ToyCodec(), positions=positions)


def build_toy_backbone(
    weights: str | os.PathLike | None = DEFAULT_TOY_WEIGHTS, positions: str = "index", seed: int = 0
) -> FluxBackbone:
    """The toy FLUX backbone: the shipped base by default, a seeded random init with ``weights=None``."""
    if weights is None:
        return _build(TOY_FLUX_CONFIG, TOY_TEXT_CONFIG, positions, seed)
    tensors, metadata = load_checked(weights, "toy base model")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{weights} is not a toy base model file (metadata format={metadata.get('format')!r})")
    config = meta_json(metadata, "transformer_config", weights)
    text_config = meta_json(metadata, "text_encoder_config", weights)
    backbone = _build(config, text_config, positions, seed)
    if list(backbone.text_encoder.vocab) != meta_json(metadata, "vocabulary", weights):
        raise ValueError(
            f"{weights} was pretrained with another toy vocabulary than the world's current one; "
            "re-make it with `byg toy pretrain`"
        )
    for prefix, module in (("transformer.", backbone.transformer), ("text_encoder.", backbone.text_encoder)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{weights}: the {prefix[:-1]} weights do not match its config ({error})") from error
    backbone.transformer.eval().requires_grad_(False)
    return backbone


def save_toy_base(backbone: FluxBackbone, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write the whole base model (transformer, text encoder buffers, configs) to one file."""
    encoder = backbone.text_encoder
    tensors = {f"transformer.{k}": v for k, v in backbone.transformer.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v for k, v in encoder.state_dict().items()})
    config = {k: backbone.transformer.config[k] for k in TOY_FLUX_CONFIG}
    config["axes_dims_rope"] = list(config["axes_dims_rope"])
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "transformer_config": config,
        "text_encoder_config": dict(
            dim=encoder.dim, pooled_dim=encoder.pooled_dim, max_length=encoder.max_length, seed=encoder.seed
        ),
        "vocabulary": list(encoder.vocab),
        "resolution": TOY_RESOLUTION,
        "pretrain": info or {},
    }
    return save_atomic(tensors, path, metadata)


def _learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``lr``: short runs end well converged."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    steps: int = PRETRAIN_STEPS,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = PRETRAIN_LR,
    out_path: str | os.PathLike = DEFAULT_TOY_WEIGHTS,
    progress: Progress | None = None,
    timesteps: str = "logit_normal",
    size: str = "small",
    device: str | torch.device = "cpu",
    init: str | os.PathLike | None = None,
    t_mean: float = 0.0,
    t_shift: float = 1.0,
    p_uncond: float = 0.0,
    distill_guidance: float = 1.0,
    adam_beta2: float = 0.999,
    stop_at: float | None = None,
) -> dict:
    """Pretrain the toy base by text-to-image flow matching and save it; deterministic from ``seed``.

    Every step draws fresh scenes of the whole world (all colour pairs) with one seeded
    generator, noises them at t from ``TIMESTEP_SAMPLERS[timesteps]`` (logit-normal by default: at
    7000 steps it drew shape kinds right 0.59 of the time, uniform t 0.48) and regresses ``eps - x``
    with AdamW. Bitwise reproducible for the same torch build and thread count. ``size`` picks the
    architecture (BASE_SIZES); ``device`` where it trains: the scenes, noise and timesteps are drawn on
    the CPU, so a seed draws the same batches on every device. ``init``: continue training that base
    file (its own architecture; ``size`` is ignored) instead of a fresh one. ``t_mean`` / ``t_shift``: the
    logit-normal's mean and the resolution shift (``timesteps.shift_time``), > 0 weighting noisier t.
    ``p_uncond``: the share of captions dropped to the empty prompt, so that the base also learns the
    unconditional velocity that classifier-free guidance (``evaluate_base(guidance=...)``) needs.
    ``distill_guidance`` w != 1: guidance distillation (as FLUX.1-dev's, at one fixed w): the base of
    ``init`` (pretrained with p_uncond > 0) is the frozen teacher and the copy trained regresses its guided
    velocity ``v_u + w (v_c - v_u)`` instead of ``eps - x``, so it draws unguided what the teacher draws guided.
    ``adam_beta2``: AdamW's second-moment decay (torch's 0.999 by default, as every base so far).
    ``stop_at``: a ``time.perf_counter()`` reading past which no further step starts (a time-limited run on a device
    of unknown speed): the base is saved as trained so far, its learning rate not yet decayed, and ``steps`` records
    the steps done, ``planned_steps`` the ``steps`` asked for.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("t_shift", t_shift),
                        ("distill_guidance", distill_guidance)):
        if not value > 0:  # checked before anything is built: steps=-3 had written an untrained base
            raise ValueError(f"pretrain: {name} must be > 0, got {value}")
    if not lr >= 0:  # 0 copies the init (a test's use)
        raise ValueError(f"pretrain: lr must be >= 0, got {lr}")
    if not 0 <= p_uncond < 1:
        raise ValueError(f"pretrain: p_uncond must be in [0, 1), got {p_uncond}")
    if not 0 < adam_beta2 < 1:
        raise ValueError(f"pretrain: adam_beta2 must be in (0, 1), got {adam_beta2}")
    start = time.perf_counter()
    if init is None:
        backbone, started = _build(toy_flux_config(size), TOY_TEXT_CONFIG, "index", seed), {}
    else:
        backbone = build_toy_backbone(init)
        backbone.transformer.requires_grad_(True)
        before = pretrain_record(init)
        size, started = before.get("size", "small"), dict(init=str(init), init_pretrain=before)
    teacher = None
    if distill_guidance != 1.0:
        if init is None or not has_unconditional(before):
            raise ValueError(
                f"guidance distillation needs a teacher with an unconditional velocity: give --init a base "
                f"pretrained with --p-uncond > 0 ({init or 'no --init given'} was not)"
            )
        teacher = build_toy_backbone(init)
        teacher.transformer.to(device)
    transformer = backbone.transformer.to(device).train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, adam_beta2), weight_decay=0.01)
    scenes_rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    sample_t = TIMESTEP_SAMPLERS[timesteps](shift=t_shift, mean=t_mean)
    warmup = max(1, min(100, steps // 10))
    smoothed, done = None, steps
    for step in range(steps):
        if stop_at is not None and time.perf_counter() >= stop_at:
            done = step
            break
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup)
        scenes = [random_scene(scenes_rng) for _ in range(batch_size)]
        x = backbone.codec.encode(render_batch(scenes, TOY_RESOLUTION)).to(device)
        # p_uncond = 0 draws nothing more, so the shipped base's scene stream is unchanged
        prompts = ["" if p_uncond > 0 and scenes_rng.random() < p_uncond else caption(s) for s in scenes]
        eps = torch.randn(x.shape, generator=generator).to(device)
        t = sample_t(batch_size, generator).to(device)
        y_t = noise(x, eps, t)
        v = backbone.velocity(y_t, t, backbone.encode_text(prompts))
        if teacher is None:
            loss = supervised_edit_loss(v, x, eps)
        else:
            with torch.no_grad():
                v_guided = _velocity_fn(teacher, prompts, distill_guidance)(y_t, t)
            loss = F.mse_loss(v, v_guided)  # guidance distillation (Meng et al. 2023, stage 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        if progress is not None:
            progress(step + 1, {"loss": value, "loss_avg": smoothed})
    transformer.eval().requires_grad_(False)
    info = dict(
        steps=done, **({} if done == steps else dict(planned_steps=steps)),
        seed=seed, batch_size=batch_size, lr=lr, timesteps=timesteps, size=size, device=str(device),
        **started,
        **({} if (t_mean, t_shift) == (0.0, 1.0) else dict(t_mean=t_mean, t_shift=t_shift)),
        **({} if p_uncond == 0.0 else dict(p_uncond=p_uncond)),
        **({} if distill_guidance == 1.0 else dict(distill_guidance=distill_guidance)),
        **({} if adam_beta2 == 0.999 else dict(adam_beta2=adam_beta2)),
        final_loss=smoothed, seconds=round(time.perf_counter() - start, 1),
    )
    path = save_toy_base(backbone, out_path, info)
    return {**info, "path": str(path), "parameters": sum(p.numel() for p in params)}


def _velocity_fn(backbone: FluxBackbone, prompts: Sequence[str], guidance: float = 1.0):
    """The base's velocity under ``prompts``; with ``guidance`` w != 1 classifier-free guidance
    v_u + w (v_c - v_u) against the empty prompt (Ho & Salimans; needs a base pretrained with p_uncond > 0)."""
    text = backbone.encode_text(list(prompts))
    empty = None if guidance == 1.0 else backbone.encode_text([""])
    return lambda y, t: guided_velocity(backbone, y, t, text, empty, guidance)


@torch.no_grad()
def evaluate_base(
    backbone: FluxBackbone, n: int = 64, seed: int = 0, steps: int = 20, batch: int = 64, guidance: float = 1.0
) -> dict:
    """Draw ``n`` random scenes' captions with the base (``guidance``: see ``_velocity_fn``), read them back,
    and report accuracies.

    Keys: ``shape_color``, ``bg_color``, ``shape`` (kind) and ``all`` (all three right),
    plus ``all_unseen_combos``/``n_unseen`` for captions showing a pair in UNSEEN_COMBOS and ``outcomes``
    (each caption's 0/1 for all three right: two bases drawn from the same ``n``, ``seed`` and ``steps`` draw the same
    captions from the same noise, so ``metrics.paired_change`` of their outcomes compares them caption by caption).
    """
    scenes = sample_scenes(n, seed)
    images = []
    for i in range(0, n, batch):
        part = scenes[i : i + batch]
        eps = initial_noise((len(part), 3, TOY_RESOLUTION, TOY_RESOLUTION), seed + i, backbone.device, backbone.dtype)
        result = integrate(backbone.schedule(steps, eps.shape), _velocity_fn(backbone, [caption(s) for s in part], guidance),
                           eps)
        images.append(backbone.decode_latents(result.latents).cpu())
    readings = [read_scene(image) for image in torch.cat(images)]
    hits = {
        field: [float(getattr(r, field) == getattr(s, field)) for r, s in zip(readings, scenes)]
        for field in ("shape_color", "bg_color", "shape")
    }
    every = [min(row) for row in zip(*hits.values())]
    unseen = [ok for ok, s in zip(every, scenes) if s.combo in UNSEEN_COMBOS]
    report = {field: sum(v) / n for field, v in hits.items()}
    report.update(all=sum(every) / n, n=n, outcomes=every)
    report.update(all_unseen_combos=sum(unseen) / len(unseen) if unseen else float("nan"), n_unseen=len(unseen))
    return report


@torch.no_grad()
def directional_prior_check(
    backbone: FluxBackbone, n: int = 64, seed: int = 0, t: float = 0.5, guidance: float = 1.0,
    alpha: float = ObjectiveConfig.alpha, terms: str = ObjectiveConfig.prior_guidance_terms,
) -> dict:
    """Does ``G_t2i(y_t, t, p_tgt) - G_t2i(y_t, t, p_src)`` point toward the edit? (paper 4.2)

    On the noised source y_t = (1 - t) x_src + t eps, the one-step predictions
    ``y_t - t v`` under the source and the target caption are read back. Reports how often
    the edited attribute reads as the source value under p_src and as the target value
    under p_tgt, and the mean cosine between the prediction difference ``-t (v_tgt - v_src)``
    and the true edit ``x_tgt - x_src``. ``guidance``: each velocity at classifier-free guidance
    (``ObjectiveConfig.prior_guidance``; see ``_velocity_fn``): the reads change, the cosine does not
    (the difference of two guided velocities is w times the unguided one's).

    Per family, ``prior_margin``: how much more the prior (``directional_prior_loss`` at ``alpha``) costs an editor
    that keeps the source (its one-step prediction x_src) than one that makes the true edit (x_tgt), at this y_t (an
    identity editor's pseudo-target, as after the identity warm-up); > 0: the prior pulls toward the edit.
    ``directional_margin``: the same for the directional term alone. Guidance moves v_src, the directional term's
    reference point, so these change with it; ``terms`` "anchor" (``ObjectiveConfig.prior_guidance_terms``) guides
    the MSE anchor's v_tgt alone, the directional term reading the unguided pair.
    """
    tuples = sample_tuples(n, seed, exclude_combos=())
    x_src = backbone.codec.encode(render_batch([tp.source for tp in tuples], TOY_RESOLUTION)).to(backbone.device)
    x_tgt = backbone.codec.encode(render_batch([tp.target for tp in tuples], TOY_RESOLUTION)).to(backbone.device)
    eps = initial_noise(x_src.shape, seed, backbone.device, backbone.dtype)
    t_vec = torch.full((n,), t, device=backbone.device)
    y_t = noise(x_src, eps, t_vec)
    v_src = _velocity_fn(backbone, [tp.src_caption for tp in tuples], guidance)(y_t, t_vec)
    v_tgt = _velocity_fn(backbone, [tp.tgt_caption for tp in tuples], guidance)(y_t, t_vec)
    v_dir = (v_src, v_tgt)  # the directional term's pair
    if terms == "anchor" and guidance != 1.0:
        v_dir = tuple(_velocity_fn(backbone, [getattr(tp, k) for tp in tuples])(y_t, t_vec)
                      for k in ("src_caption", "tgt_caption"))
    reads = {}
    for name, v in (("src", v_src), ("tgt", v_tgt)):
        reads[name] = [read_scene(img) for img in backbone.decode_latents(one_step_prediction(y_t, t_vec, v)).cpu()]
    fields = [edit_family(tp.family).field for tp in tuples]
    src_ok = [getattr(r, f) == getattr(tp.source, f) for r, f, tp in zip(reads["src"], fields, tuples)]
    tgt_ok = [getattr(r, f) == getattr(tp.target, f) for r, f, tp in zip(reads["tgt"], fields, tuples)]
    cos = torch.nn.functional.cosine_similarity((-t * (v_tgt - v_src)).flatten(1), (x_tgt - x_src).flatten(1), dim=1)
    v_keep, v_edit = velocity_target(x_src, eps), (y_t - x_tgt) / t  # one-step predictions x_src, x_tgt
    by_family = {}
    for family in sorted(set(tp.family for tp in tuples)):
        idx = [i for i, tp in enumerate(tuples) if tp.family == family]

        def margin(loss: Callable[[torch.Tensor], torch.Tensor]) -> float:
            return float(loss(v_keep[idx]) - loss(v_edit[idx]))

        by_family[family] = dict(
            tgt_reads_target=sum(tgt_ok[i] for i in idx) / len(idx), cosine=float(cos[idx].mean()), n=len(idx),
            prior_margin=margin(lambda v: directional_prior_loss(v, v_dir[0][idx], v_dir[1][idx], alpha,
                                                                 v_anchor=v_tgt[idx])),
            directional_margin=margin(lambda v: directional_loss(v, v_dir[0][idx], v_dir[1][idx])),
        )
    return dict(
        t=t, n=n, guidance=guidance, terms=terms,
        src_reads_source=sum(src_ok) / n,
        tgt_reads_target=sum(tgt_ok) / n,
        cosine=float(cos.mean()),
        by_family=by_family,
    )
