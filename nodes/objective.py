"""DirectionalPriorLoss: the ByG objective's weights and ablation switches, and a map of the prior's direction."""

from __future__ import annotations

import torch

from . import host
from . import inputs as I
from .values import MODEL, OBJECTIVE

BLANK_MAP = (1, 64, 64, 3)  # what the map output shows when no model and image are connected

WEIGHTS = {
    "lambda_cycle": "Weight of the cycle loss (source preservation, paper 4.3).",
    "lambda_prior": "Weight of the directional prior loss, forward and reverse (paper 4.2).",
    "lambda_id": "Weight of the identity loss (the editor learns to read its source, paper 4.3).",
    "alpha": "Weight of the MSE anchor toward v_tgt inside the prior loss (paper 4.2).",
}
SWITCHES = {
    "gradient_routing": "Off: the reverse pass is conditioned on the blurry one-step prediction (ablation).",
    "cycle": "Off: no cycle loss and no reverse-pass prior (ablation).",
    "directional": "Off: the prior is the MSE anchor alone, no direction term (ablation).",
    "bootstrap": "Off: the forward pass sees the noised source instead of the EMA rollout's state (ablation).",
    "regularization": "Off: no prior loss at all; the editor collapses to identity (ablation).",
    "identity_steps": "Off: no random identity-only steps after the warm-up (ablation).",
}

PRIOR_GUIDANCE = (
    "Classifier-free guidance w of the frozen base's velocities in the prior, v_u + w (v_c - v_u) against the empty "
    "prompt (paper 4.2); 1 = unguided. FLUX.1-dev is guidance-distilled, so its prior is guided already: keep 1. "
    "Above 1 only for a base that learnt the empty prompt (Wan2.2; the toy medium base)."
)
PRIOR_GUIDANCE_TERMS_TIP = (
    "Which of the prior's base velocities prior_guidance guides: all (v_src and v_tgt in both terms, as the paper's "
    "distilled FLUX.1-dev) or anchor (only the MSE anchor's v_tgt; the direction term keeps the unguided reference). "
    "Nothing to choose at prior_guidance 1."
)


class DirectionalPriorLoss:
    DESCRIPTION = (
        "The ByG objective (paper Algorithm 1): loss weights and the ablation switches, for CycleTrainer. "
        "Given a model, an image and two captions it also shows where the base model's edit direction "
        "v_tgt - v_src acts on that image."
    )
    CATEGORY = "ByG/train"
    RETURN_TYPES = (OBJECTIVE, "IMAGE")
    RETURN_NAMES = ("objective", "direction_map")
    OUTPUT_TOOLTIPS = (
        "The objective configuration for CycleTrainer.",
        "Brightness = size of the base model's v_tgt - v_src per pixel (each image scaled to max 1); black when "
        "no model and image are connected.",
    )
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.objective import PRIOR_GUIDANCE_TERMS, ObjectiveConfig

        d = ObjectiveConfig()
        required = {name: I.number(getattr(d, name), 0.0, 100.0, 0.01, tip) for name, tip in WEIGHTS.items()}
        required["rollout_steps"] = I.integer(d.rollout_steps, 1, 1000, "Euler steps n of the EMA rollout that makes the noisy targets (paper 4.1).")
        required |= {name: I.flag(getattr(d, name), tip) for name, tip in SWITCHES.items()}
        optional = {
            "model": I.socket(MODEL, "Base model for the direction map (optional)."),
            "image": I.socket("IMAGE", "Source image for the direction map (optional)."),
            "src_caption": I.text("", "Caption of the image as it is (the map's p_src).", multiline=True),
            "tgt_caption": I.text("", "Caption of the image as it should become (the map's p_tgt).", multiline=True),
            "t": I.number(0.5, 0.01, 1.0, 0.01, "Noise level of the map's y_t (1 = pure noise, 0 = the image)."),
            "seed": I.seed("Seed of the noise in the map's y_t."),
            # last (the newest last), so that a workflow saved before them keeps its other widgets' values in place
            "prior_guidance": I.number(d.prior_guidance, 0.01, 100.0, 0.01, PRIOR_GUIDANCE),
            "prior_guidance_terms": I.choice(list(PRIOR_GUIDANCE_TERMS), PRIOR_GUIDANCE_TERMS_TIP, d.prior_guidance_terms),
        }
        return {"required": required, "optional": optional}

    @host.outside_inference_mode(grad=False)
    def build(self, model=None, image=None, src_caption="", tgt_caption="", t=0.5, seed=0, **settings):
        from byg_core.objective import ObjectiveConfig

        objective = ObjectiveConfig(**settings)
        try:
            objective.validate()
        except ValueError as error:
            raise ValueError(f"DirectionalPriorLoss: {error}") from error
        if model is None or image is None:
            return (objective, torch.zeros(BLANK_MAP))
        return (objective, self.direction_map(model, image, src_caption, tgt_caption, t, seed))

    @staticmethod
    def direction_map(model, image, src_caption, tgt_caption, t, seed):
        from byg_core.maps import edit_direction_map

        if not src_caption.strip() or not tgt_caption.strip():
            raise ValueError("DirectionalPriorLoss: the direction map needs both src_caption and tgt_caption")
        backbone = model.backbone
        try:
            p_src, p_tgt = backbone.encode_text([src_caption.strip()]), backbone.encode_text([tgt_caption.strip()])
            adapters = model.prepare()
            heat = edit_direction_map(backbone, adapters, host.image_to_pixels(image), p_src, p_tgt, t, seed,
                                      encoded=lambda: host.free_host_models(backbone))  # the GPU to the transformer
        except ValueError as error:
            raise ValueError(f"DirectionalPriorLoss: {error}") from error
        return host.pixels_to_image(heat.expand(-1, 3, -1, -1))
