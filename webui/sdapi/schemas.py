"""The shapes of AUTOMATIC1111's `/sdapi/v1` requests and responses, as clients send and read them.

Field names and types are A1111's (modules/api/models.py builds them from
`StableDiffusionProcessingTxt2Img` / `Img2Img`), so a body a client already
sends validates here. Unknown keys are ignored, as there: clients send their
own extensions' fields. Settings a client leaves out (steps, size, CFG,
sampler) take the picked model's own defaults rather than A1111's 512x512,
50 steps. What each field becomes in Atelier, or why it cannot, is
`webui/sdapi/mapping.py`'s business; these classes only type them and feed
`/docs`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationBody(_Lenient):
    """Fields txt2img and img2img share."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = Field(None, description="Not supported: Atelier has no saved prompt styles.")
    seed: int = Field(-1, description="-1: a random seed (recorded, so the image can be made again).")
    subseed: int = Field(-1, description="The variation seed; -1: random. Used when subseed_strength > 0.")
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, description="A name from GET /sdapi/v1/samplers; default: the model's.")
    scheduler: str | None = Field(None, description="A name from GET /sdapi/v1/schedulers; default: automatic.")
    sampler_index: str | None = Field(None, description="Deprecated spelling of sampler_name.")
    batch_size: int = 1
    n_iter: int = Field(1, description="Batches, one gallery record each; seeds continue from batch to batch.")
    steps: int | None = Field(None, description="Default: the model's.")
    cfg_scale: float | None = Field(None, description="Default: the model's.")
    width: int | None = Field(None, description="Rounded down to a multiple of 8, as A1111 does; default: the model's.")
    height: int | None = Field(
        None, description="Rounded down to a multiple of 8, as A1111 does; default: the model's."
    )
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="sd_model_checkpoint picks a model from GET /sdapi/v1/sd-models; other keys are listed."
    )
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = Field(None, description="An SDXL refiner from the model list.")
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    infotext: str | None = None
    script_name: str | None = None
    script_args: list[Any] | None = None
    send_images: bool = True
    save_images: bool = Field(False, description="Ignored: every generation is kept in the gallery.")
    alwayson_scripts: dict[str, Any] | None = Field(
        None, description='Only "ControlNet" (any case): {"args": [units]}, the sd-webui-controlnet unit fields.'
    )
    force_task_id: str | None = None


class Txt2ImgBody(GenerationBody):
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstpass_image: str | None = None


class Img2ImgBody(GenerationBody):
    init_images: list[str] | None = Field(None, description="Base64 images or data: URLs; the first is used.")
    resize_mode: int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill.")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="White is regenerated: inpainting.")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = Field(None, description="Atelier's mask_feather: a soft seam inside the masked area.")
    mask_round: bool = True
    inpainting_fill: int = 1
    inpaint_full_res: bool = Field(True, description="With a padding: only the masked area, at full resolution.")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs, the gallery's own files with their metadata.")
    parameters: dict[str, Any]
    info: str = Field(description="JSON: seed, all_seeds, infotexts ... as A1111 writes, plus not_supported.")
    generation_id: int | None = Field(description="The gallery record of the first batch.")
    generation_ids: list[int] = Field(description="One gallery record per batch (n_iter).")


class PngInfoBody(_Lenient):
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None
