"""ComfyUI's `prompt` chunk: the executed graph in API form, read by following links back from the sampler.

SaveImage writes `prompt` (the graph as `{node id: {"class_type", "inputs"}}`,
an input being a value or a link `[node id, output index]`) and `workflow`
(the editor's layout), both with `PngInfo.add_text` (nodes.py, SaveImage.
save_images). Only `prompt` says what ran, so only it is read.

The sampler (KSampler, KSamplerAdvanced, SamplerCustom or
SamplerCustomAdvanced) that starts from an empty latent or an image is the
first pass; from it, links lead to the prompts (through ControlNet, FLUX
guidance and inpaint conditioning), the latent (empty: text to image;
VAEEncode: image to image; VAEEncodeForInpaint, SetLatentNoiseMask or
InpaintModelConditioning: inpainting), and the model (through LoRA loaders,
to the checkpoint). A KSamplerAdvanced that takes over at the step the first
one stopped is an SDXL refiner; any other later sampler is a second pass and
is listed as one. Every node read is marked; every other node that sets
something is listed as it is.
"""

from __future__ import annotations

from typing import Any

from pipelines.requests import MAX_CONTROLS
from webui.imports import samplers
from webui.imports.comfyui_graph import (
    CHECKPOINT_NAMES,
    CHECKPOINTS,
    CONTROLS,
    EMPTY_LATENTS,
    LORAS,
    MAX_HOPS,
    OUTPUTS,
    PREPROCESSORS,
    SAMPLERS,
    Graph,
    link_of,
    settings_of,
)
from webui.imports.common import (
    Builder,
    Catalog,
    ImportedRequest,
    MetadataError,
    as_float,
    as_int,
    controlnet_named,
)


class _Reader:
    def __init__(self, graph: Graph, catalog: Catalog | None) -> None:
        self.graph = graph
        self.catalog = catalog
        self.built: Builder | None = None
        self.pending: dict[str, Any] = {}  # found before the builder exists (it needs the prompt)
        self.controls: dict[str, dict[str, Any]] = {}  # ControlNet nodes met on the way to the prompts
        self.guidance: tuple[str, Any] | None = None  # FLUX's distilled guidance, where it was found
        self.models_seen: set[str] = set()
        self.sampler_values: dict[str, tuple[str, Any]] = {}
        self.flow = _is_flow(graph)

    def read(self) -> ImportedRequest:
        graph = self.graph
        first, later = self._passes()
        graph.mark(first)
        sampler = self._sampler(first)
        # 1. Prompts, and the ControlNets and guidance the conditioning passes through.
        positive = self._prompt(*sampler["positive"]) if sampler["positive"] else None
        if positive is None:
            raise MetadataError(
                f"The file's ComfyUI {graph.name(first)} does not take its positive input from a text encoder."
            )
        built = self.built = Builder("comfyui", positive[1], self.catalog)
        built.list(self.pending)
        negative = self._prompt(*sampler["negative"]) if sampler["negative"] else None
        if negative is not None and negative[1]:
            built.set({f"{graph.name(negative[0])}.text": negative[1]}, negative_prompt=negative[1])
        # 2. The model with its LoRAs, and the text encoders.
        for where in sampler["model"]:
            self._model(*where)
        for text_node in (positive[0], negative[0] if negative else None):
            if text_node is not None:
                self._clip(text_node)
        # 3. The sampler's settings, then the task from where its latent comes.
        self._settings(sampler)
        self._latent(first)
        self._controls()
        # 4. Later samplers: an SDXL refiner, or a second pass said as what it is.
        refined = False
        for node_id in later:
            if not refined and self._refiner(sampler, node_id):
                refined = True
            else:
                self._second_pass(node_id)
        values = self.sampler_values
        if refined:  # the base stops early and hands over its noisy latent: that is what a refiner is
            values.pop("end_at_step", None)
            values.pop("return_with_leftover_noise", None)
        built.list({key: value for key, value in values.values()})
        # 5. Every other node that sets something.
        for node_id, (kind, inputs) in graph.nodes.items():
            if node_id in graph.used or kind in OUTPUTS:
                continue
            settings = settings_of(inputs)
            if settings:
                built.list({graph.name(node_id): settings})
        return built.done()

    def _passes(self) -> tuple[str, list[str]]:
        graph = self.graph
        found = [node_id for node_id, (kind, _) in graph.nodes.items() if kind in SAMPLERS]
        if not found:
            raise MetadataError(
                "The file's ComfyUI graph has no sampler node (KSampler, KSamplerAdvanced, SamplerCustom or "
                "SamplerCustomAdvanced)."
            )
        upstream = {node_id: graph.upstream_samplers(node_id) for node_id in found}
        first = [node_id for node_id in found if not upstream[node_id]]
        if not first and len(found) == 1:
            raise MetadataError(
                f"The file's ComfyUI {graph.name(found[0])} takes its latent from its own output; Atelier reads a "
                "graph whose first sampler starts from an empty latent or an image."
            )
        if len(first) != 1:
            raise MetadataError(
                f"The file's ComfyUI graph has {len(found)} sampler nodes and {len(first) or 'none'} of them "
                "start from an empty latent or an image of their own; Atelier reads a graph with one first pass."
            )
        # Later passes in the order they run: fewer samplers before them first.
        later = sorted((n for n in found if n != first[0]), key=lambda n: (len(upstream[n]), n))
        return first[0], later

    def _sampler(self, node_id: str) -> dict[str, Any]:
        """One sampler's settings as (key, value) and its links, whichever of the four kinds it is."""
        graph = self.graph
        kind, inputs = graph.nodes[node_id]
        name = graph.name(node_id)
        values = settings_of(inputs)
        read: dict[str, Any] = {"name": name, "node": node_id, "kind": kind, "values": {}, "model": []}

        def take(key: str, source: str, owner: str) -> None:
            owner_values = values if owner == node_id else settings_of(graph.inputs(owner))
            if key in owner_values:
                read["values"][source] = (f"{graph.name(owner)}.{key}", owner_values.pop(key))
                if owner == node_id:
                    values.pop(key, None)

        if kind in ("KSampler", "KSamplerAdvanced", "SamplerCustom"):
            take("noise_seed" if kind != "KSampler" else "seed", "seed", node_id)
            for key in ("steps", "cfg", "sampler_name", "scheduler", "denoise", "add_noise"):
                take(key, key, node_id)
            for key in ("start_at_step", "end_at_step", "return_with_leftover_noise"):
                take(key, key, node_id)
            read["positive"] = graph.follow(node_id, "positive")
            read["negative"] = graph.follow(node_id, "negative")
            if graph.follow(node_id, "model"):
                read["model"].append((node_id, "model"))
        else:  # SamplerCustomAdvanced: noise, guider, sampler and sigmas are nodes of their own
            read["positive"] = read["negative"] = None
            noise = graph.follow(node_id, "noise")
            if noise and graph.kind(noise[0]) == "RandomNoise":
                graph.mark(noise[0])
                take("noise_seed", "seed", noise[0])
            guider = graph.follow(node_id, "guider")
            if guider and graph.kind(guider[0]) in ("BasicGuider", "CFGGuider"):
                graph.mark(guider[0])
                if graph.kind(guider[0]) == "BasicGuider":
                    read["positive"] = graph.follow(guider[0], "conditioning")
                    read["values"]["cfg"] = (f"{graph.name(guider[0])}", 1.0)  # no classifier-free guidance
                else:
                    read["positive"] = graph.follow(guider[0], "positive")
                    read["negative"] = graph.follow(guider[0], "negative")
                    take("cfg", "cfg", guider[0])
                read["model"].append((guider[0], "model"))
            chooser = graph.follow(node_id, "sampler")
            if chooser and graph.kind(chooser[0]) == "KSamplerSelect":
                graph.mark(chooser[0])
                take("sampler_name", "sampler_name", chooser[0])
            sigmas = graph.follow(node_id, "sigmas")
            if sigmas and graph.kind(sigmas[0]) == "BasicScheduler":
                graph.mark(sigmas[0])
                for key in ("scheduler", "steps", "denoise"):
                    take(key, key, sigmas[0])
                read["model"].append((sigmas[0], "model"))
        if kind == "SamplerCustom":
            for key, field_name in (("sampler", "sampler_name"), ("sigmas", "scheduler")):
                link = graph.follow(node_id, key)
                if link and graph.kind(link[0]) in ("KSamplerSelect", "BasicScheduler"):
                    graph.mark(link[0])
                    take(field_name, field_name, link[0])
                    if graph.kind(link[0]) == "BasicScheduler":
                        take("steps", "steps", link[0])
        read["rest"] = {key: value for key, value in values.items()}
        return read

    # -- prompts ------------------------------------------------------------

    def _prompt(self, node_id: str, output: int) -> tuple[str, str] | None:
        """The text a conditioning link leads to (node, text), noting ControlNets and guidance on the way."""
        graph = self.graph
        seen: set[str] = set()
        current: tuple[str, int] | None = (node_id, output)
        while current is not None and current[0] not in seen and len(seen) < MAX_HOPS:
            node, out = current
            seen.add(node)
            kind, values = graph.kind(node), settings_of(graph.inputs(node))
            if kind in ("CLIPTextEncode", "CLIPTextEncodeSDXLRefiner", "CLIPTextEncodeSDXL", "CLIPTextEncodeFlux"):
                # SDXL's two encoders and FLUX's two each take a text; ours takes one text for both.
                main, other = {
                    "CLIPTextEncodeSDXL": ("text_g", "text_l"),
                    "CLIPTextEncodeFlux": ("t5xxl", "clip_l"),
                }.get(kind, ("text", None))
                text = values.pop(main, None)
                if not isinstance(text, str):
                    return None
                graph.mark(node)
                second = values.pop(other, None) if other else None
                if second is not None and second != text:
                    values[other] = second  # type: ignore[index]
                if kind == "CLIPTextEncodeFlux" and "guidance" in values:
                    self.guidance = (f"{graph.name(node)}.guidance", values.pop("guidance"))
                self.note({f"{graph.name(node)}.{key}": value for key, value in values.items()})
                return node, text
            if kind == "ConditioningZeroOut":  # FLUX's empty negative
                graph.mark(node)
                return node, ""
            if kind in CONTROLS:
                self.controls.setdefault(node, {})
                onward = "conditioning" if kind == "ControlNetApply" else ("negative" if out == 1 else "positive")
            elif kind == "FluxGuidance":
                graph.mark(node)
                self.guidance = (f"{graph.name(node)}.guidance", values.get("guidance"))
                onward = "conditioning"
            elif kind == "InpaintModelConditioning":
                onward = "negative" if out == 1 else "positive"
            else:
                # An area, a combination, a style: followed to its text, and left listed with the other nodes.
                onward = "conditioning"
            current = graph.follow(node, onward)
        return None

    def note(self, found: dict[str, Any]) -> None:
        if self.built is None:
            self.pending.update(found)
        else:
            self.built.list(found)

    # -- the model, its LoRAs, the text encoders ----------------------------

    def _model(self, node_id: str, name: str) -> None:
        graph, built = self.graph, self.built
        assert built is not None
        seen: set[str] = set()
        current = graph.follow(node_id, name)
        while current is not None and current[0] not in seen and len(seen) < MAX_HOPS:
            node = current[0]
            seen.add(node)
            if node in self.models_seen:
                return
            self.models_seen.add(node)
            kind, values = graph.kind(node), settings_of(graph.inputs(node))
            if kind in CHECKPOINTS:
                graph.mark(node)
                key = next((key for key in CHECKPOINT_NAMES if key in values), None)
                if key is not None:
                    built.model(f"{graph.name(node)}.{key}", values.pop(key))
                if kind == "UNETLoader" and values.get("weight_dtype") == "default":
                    del values["weight_dtype"]
                built.list({f"{graph.name(node)}.{key}": value for key, value in values.items()})
                return
            if kind in LORAS:
                graph.mark(node)
                self._lora(node, values)
            elif kind == "ModelSamplingFlux" and (
                as_float(values.get("max_shift")),
                as_float(values.get("base_shift")),
            ) == (
                1.15,
                0.5,
            ):
                graph.mark(node)  # diffusers' FLUX scheduler config shifts by resolution with these same numbers
            current = graph.follow(node, "model")

    def _lora(self, node: str, values: dict[str, Any]) -> None:
        built, name = self.built, self.graph.name(node)
        assert built is not None
        strength_model, strength_clip = values.pop("strength_model", None), values.pop("strength_clip", None)
        if built.lora(f"{name}.lora_name", values.get("lora_name"), strength_model):
            values.pop("lora_name")
            if strength_clip is not None and strength_clip != strength_model:
                # One weight here for the model and its text encoders alike.
                values["strength_clip"] = strength_clip
        else:
            values.update(strength_model=strength_model, strength_clip=strength_clip)
        built.list({f"{name}.{key}": value for key, value in values.items()})

    def _clip(self, text_node: str) -> None:
        graph, built = self.graph, self.built
        assert built is not None
        for node, _ in graph.chain(text_node, "clip", {kind: "clip" for kind in ("LoraLoader", "CLIPSetLastLayer")}):
            kind, values = graph.kind(node), settings_of(graph.inputs(node))
            if node in graph.used and kind != "CLIPSetLastLayer":
                continue
            if kind == "LoraLoader":
                graph.mark(node)
                self._lora(node, values)
            elif kind == "CLIPSetLastLayer" and values.get("stop_at_clip_layer") == -1:
                graph.mark(node)  # the last layer: what every run here uses
            elif kind in ("DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader"):
                graph.mark(node)
                for key, value in values.items():
                    if key.startswith("clip_name"):
                        built.refer("text encoder", value)
                built.list({f"{graph.name(node)}.{key}": value for key, value in values.items()})

    # -- the sampler's own settings ------------------------------------------

    def _settings(self, sampler: dict[str, Any]) -> None:
        built, values = self.built, dict(sampler["values"])
        assert built is not None
        for source, field_name, read in (("seed", "seed", as_int), ("steps", "num_inference_steps", as_int)):
            if source in values:
                key, raw = values.pop(source)
                built.set({key: raw}, **{field_name: read(raw)})
        if self.guidance is not None:
            key, raw = self.guidance
            built.set({key: raw}, guidance_scale=as_float(raw))
        if "cfg" in values:
            key, raw = values.pop("cfg")
            if not (self.flow and as_float(raw) == 1.0):  # FLUX runs without classifier-free guidance
                built.set({key: raw}, guidance_scale=as_float(raw))
        if "sampler_name" in values or "scheduler" in values:
            (name_key, name), (scheduler_key, scheduler) = (
                values.pop("sampler_name", (None, None)),
                values.pop("scheduler", (None, None)),
            )
            ours = samplers.comfyui(name, scheduler, flow=self.flow)
            built.set({name_key: name, scheduler_key: scheduler}, sampler=ours)
        if "add_noise" in values and values["add_noise"][1] in ("enable", True):
            del values["add_noise"]
        steps = built.request.num_inference_steps
        if "end_at_step" in values and (as_int(values["end_at_step"][1]) or 0) >= steps:
            del values["end_at_step"]
        if "return_with_leftover_noise" in values and values["return_with_leftover_noise"][1] == "disable":
            del values["return_with_leftover_noise"]
        if "start_at_step" in values and as_int(values["start_at_step"][1]) == 0:
            del values["start_at_step"]
        self.sampler_values = values  # denoise and start_at_step: the task's to read
        built.list({f"{sampler['name']}.{key}": value for key, value in sampler["rest"].items()})

    # -- the task, from where the latent comes -----------------------------------

    def _latent(self, first: str) -> None:
        graph, built = self.graph, self.built
        assert built is not None
        link = graph.follow(first, "latent_image")
        kind = graph.kind(link[0]) if link else None
        node = link[0] if link else ""
        if kind in EMPTY_LATENTS:
            graph.mark(node)
            name, latent = graph.name(node), settings_of(graph.inputs(node))
            width, height = latent.pop("width", None), latent.pop("height", None)
            built.set({f"{name}.width": width, f"{name}.height": height}, width=as_int(width), height=as_int(height))
            if as_int(latent.get("batch_size")) == 1:
                del latent["batch_size"]
            built.list({f"{name}.{key}": value for key, value in latent.items()})
        elif kind == "VAEEncode":
            graph.mark(node)
            built.task = "img2img"
            self._picture(node, "pixels", "image", "image")
        elif kind == "VAEEncodeForInpaint":
            graph.mark(node)
            built.task = "inpaint"
            self._picture(node, "pixels", "image", "image")
            self._picture(node, "mask", "mask", "mask_image")
            grow = settings_of(graph.inputs(node)).get("grow_mask_by")
            if grow not in (0, None):  # it dilates with a box of that size; ours grows by a distance
                built.list({f"{graph.name(node)}.grow_mask_by": grow})
        elif kind == "SetLatentNoiseMask":
            graph.mark(node)
            built.task = "inpaint"
            source = graph.follow(node, "samples")
            if source and graph.kind(source[0]) == "VAEEncode":
                graph.mark(source[0])
                self._picture(source[0], "pixels", "image", "image")
            self._picture(node, "mask", "mask", "mask_image")
        elif kind == "InpaintModelConditioning" and link and link[1] == 2:
            graph.mark(node)
            built.task = "inpaint"
            self._picture(node, "pixels", "image", "image")
            self._picture(node, "mask", "mask", "mask_image")
            if settings_of(graph.inputs(node)).get("noise_mask") is False:
                built.list({f"{graph.name(node)}.noise_mask": False})
        elif link:
            built.list({f"{graph.name(first)}.latent_image": f"from {graph.name(node)}"})
        self._strength()

    def _strength(self) -> None:
        """Denoise as our strength, and the step count diffusers needs to run the same steps."""
        built, values = self.built, self.sampler_values
        assert built is not None
        steps = built.request.num_inference_steps
        denoise = values.pop("denoise", None)
        start = values.pop("start_at_step", None)
        if built.task == "txt2img":
            if denoise is not None and as_float(denoise[1]) != 1.0:
                built.list({denoise[0]: denoise[1]})
            if start is not None and as_int(start[1]) != 0:
                built.list({start[0]: start[1]})
        elif denoise is not None:
            # KSampler runs `steps` steps of a schedule int(steps / denoise) long (comfy/samplers.py,
            # KSampler.set_steps); diffusers runs int(num_inference_steps * strength) of its schedule.
            strength = as_float(denoise[1])
            total = int(steps / strength) if strength and 0 < strength <= 1 else None
            if total is None or not built.set({denoise[0]: denoise[1]}, num_inference_steps=total):
                built.list({denoise[0]: denoise[1]})
            else:
                built.task_fields["strength"] = strength
        elif start is not None:
            # KSamplerAdvanced skips the first start_at_step steps of `steps`.
            first = as_int(start[1])
            if first is not None and 0 <= first < steps:
                built.task_fields["strength"] = (steps - first) / steps
            else:
                built.list({start[0]: start[1]})
        else:
            built.task_fields["strength"] = 1.0

    def _picture(self, node: str, name: str, kind: str, field: str) -> None:
        """Name the file a picture input came from, as the request field it fills."""
        graph, built = self.graph, self.built
        assert built is not None
        link = graph.follow(node, name)
        if link is None:
            return
        source, output = link
        values = settings_of(graph.inputs(source))
        if graph.kind(source) == "LoadImage" and isinstance(values.get("image"), str):
            graph.mark(source)
            # LoadImage's second output is the mask it makes from the file's alpha (nodes.py, LoadImage).
            built.refer(kind, values["image"] if output == 0 else f"{values['image']} (alpha channel)", field)
        elif graph.kind(source) == "LoadImageMask" and isinstance(values.get("image"), str):
            graph.mark(source)
            built.refer(kind, f"{values['image']} ({values.get('channel', 'alpha')} channel)", field)
        else:
            built.refer(kind, f"the output of {graph.name(source)}", field)

    def _controls(self) -> None:
        graph, built = self.graph, self.built
        assert built is not None
        units: list[dict[str, Any]] = []
        for node in self.controls:
            name, values = graph.name(node), settings_of(graph.inputs(node))
            graph.mark(node)
            if len(units) == MAX_CONTROLS:
                built.list({name: values})
                continue
            unit: dict[str, Any] = {"preprocessor": "none"}
            number = len(units)
            strength = as_float(values.pop("strength", 1.0))
            start, end = as_float(values.pop("start_percent", 0.0)), as_float(values.pop("end_percent", 1.0))
            if strength is not None and 0 <= strength <= 2:
                unit["conditioning_scale"] = strength
            else:
                built.list({f"{name}.strength": graph.inputs(node).get("strength")})
            if start is not None and end is not None and 0 <= start < end <= 1:
                unit.update(guidance_start=start, guidance_end=end)
            else:
                built.list({f"{name}.start_percent": start, f"{name}.end_percent": end})
            built.list({f"{name}.{key}": value for key, value in values.items()})
            loader = graph.follow(node, "control_net")
            if loader and graph.kind(loader[0]) in ("ControlNetLoader", "DiffControlNetLoader"):
                graph.mark(loader[0])
                file = settings_of(graph.inputs(loader[0])).get("control_net_name")
                picked = controlnet_named(file) if isinstance(file, str) else None
                built.refer("controlnet", file, f"controls.{number}.controlnet", picked)
                if picked:
                    unit["controlnet"] = picked
                else:
                    built.list({f"{graph.name(loader[0])}.control_net_name": file})
            image = graph.follow(node, "image")
            if image and graph.kind(image[0]) in PREPROCESSORS:
                # A detector node between the file and the ControlNet: ours runs the same detector.
                unit["preprocessor"] = PREPROCESSORS[graph.kind(image[0])]
                graph.mark(image[0])
                detector = settings_of(graph.inputs(image[0]))
                built.list({f"{graph.name(image[0])}.{key}": value for key, value in detector.items()})
                self._picture(image[0], "image", "control image", f"controls.{number}.image")
            else:
                self._picture(node, "image", "control image", f"controls.{number}.image")
            units.append(unit)
        if units:
            built.task_fields["controls"] = units
            if built.task == "img2img" or built.task == "inpaint":
                built.task_fields.setdefault("strength", 1.0)
            else:
                built.task_fields.pop("strength", None)
            built.task = "controlnet"

    # -- later samplers ------------------------------------------------------------

    def _refiner(self, first: dict[str, Any], node: str) -> bool:
        """An SDXL refiner: a KSamplerAdvanced that takes the first pass's latent at the step it stopped."""
        graph, built = self.graph, self.built
        assert built is not None
        if first["kind"] != "KSamplerAdvanced" or graph.kind(node) != "KSamplerAdvanced":
            return False
        base, refiner = settings_of(graph.inputs(first["node"])), settings_of(graph.inputs(node))
        steps, stop = as_int(base.get("steps")), as_int(base.get("end_at_step"))
        latent = graph.follow(node, "latent_image")
        if not (latent and latent[0] == first["node"] and steps and stop and 0 < stop < steps):
            return False
        if as_int(refiner.get("start_at_step")) != stop or as_int(refiner.get("steps")) != steps:
            return False
        graph.mark(node)
        name = graph.name(node)
        built.set({f"{first['name']}.end_at_step": stop}, refiner_switch=stop / steps)
        for checkpoint, _ in graph.chain(node, "model", {kind: "model" for kind in LORAS}):
            if graph.kind(checkpoint) in CHECKPOINTS:
                graph.mark(checkpoint)
                values = settings_of(graph.inputs(checkpoint))
                key = next((key for key in CHECKPOINT_NAMES if key in values), "ckpt_name")
                built.model(f"{graph.name(checkpoint)}.{key}", values.get(key), kind="refiner")
        # What the refiner does as the base does, or as every refiner here does, needs no mention.
        plain = {
            "add_noise": "disable",
            "start_at_step": stop,
            "return_with_leftover_noise": "disable",
            "noise_seed": refiner.get("noise_seed"),  # no noise is added, so its seed does nothing
            "steps": steps,
            **{key: base.get(key) for key in ("cfg", "sampler_name", "scheduler")},
        }
        rest = {key: value for key, value in refiner.items() if plain.get(key, object()) != value}
        if as_int(refiner.get("end_at_step")) is not None and refiner["end_at_step"] >= steps:
            rest.pop("end_at_step", None)
        built.list({f"{name}.{key}": value for key, value in rest.items()})
        for which in ("positive", "negative"):
            link = graph.follow(node, which)
            if link is None:
                continue
            found = self._prompt(*link)
            ours = built.request.prompt if which == "positive" else built.request.negative_prompt
            if found is not None and found[1] != ours:
                built.list({f"{graph.name(found[0])}.text": found[1]})
        return True

    def _second_pass(self, node: str) -> None:
        """A later pass: listed under what it is, a hires fix when an upscale comes between the passes."""
        graph, built = self.graph, self.built
        assert built is not None
        between: list[str] = []
        todo = [link[0]] if (link := graph.follow(node, "latent_image")) else []
        while todo and len(between) < MAX_HOPS:
            current = todo.pop()
            if current in between or graph.kind(current) in SAMPLERS:
                continue
            between.append(current)
            todo += [link[0] for value in graph.inputs(current).values() if (link := link_of(value)) and link[0] in graph.nodes
                     and graph.kind(link[0]) not in CHECKPOINTS + ("VAELoader", "UpscaleModelLoader")]  # fmt: skip
        upscaled = any("Upscale" in graph.kind(n) or "Scale" in graph.kind(n) for n in between)
        label = "hires fix" if upscaled else "second pass"
        for current in [*reversed(between), node]:
            graph.mark(current)
            values = settings_of(graph.inputs(current))
            if values:
                built.list({f"{label}: {graph.name(current)}": values})
        for current in between:
            model = graph.follow(current, "upscale_model")
            if model and graph.kind(model[0]) == "UpscaleModelLoader":
                graph.mark(model[0])
                file = settings_of(graph.inputs(model[0])).get("model_name")
                built.refer("upscale model", file)
                built.list({f"{label}: {graph.name(model[0])}": settings_of(graph.inputs(model[0]))})


def _is_flow(graph: Graph) -> bool:
    """A FLUX graph: its guidance, its model sampling, its text encoders or its weights say so."""
    for kind, inputs in graph.nodes.values():
        if kind in ("FluxGuidance", "ModelSamplingFlux", "CLIPTextEncodeFlux"):
            return True
        if kind == "DualCLIPLoader" and inputs.get("type") == "flux":
            return True
        if kind in CHECKPOINTS and any("flux" in str(inputs.get(key, "")).lower() for key in CHECKPOINT_NAMES):
            return True
    return False


def read_comfyui(text: str, catalog: Catalog | None = None) -> ImportedRequest:
    return _Reader(Graph(text), catalog).read()
