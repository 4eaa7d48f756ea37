"""ComfyUI's API-form graph: its nodes, their links, and walking them; the reading is webui/imports/comfyui.py's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from webui.imports.common import MetadataError, as_int, json_object

MAX_HOPS = 64  # links followed along one chain before giving up (a cycle, or a hostile graph)
MAX_NODES = 5_000

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
OUTPUTS = ("SaveImage", "PreviewImage", "VAEDecode", "VAEDecodeTiled")  # where the image went, not how it was made
EMPTY_LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage")
CHECKPOINTS = ("CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "unCLIPCheckpointLoader")
CHECKPOINT_NAMES = ("ckpt_name", "unet_name")
LORAS = ("LoraLoader", "LoraLoaderModelOnly")
CONTROLS = ("ControlNetApply", "ControlNetApplyAdvanced")
# comfyui_controlnet_aux's nodes and ComfyUI's own Canny -> our preprocessor of the same detector.
PREPROCESSORS = {
    "Canny": "canny",
    "CannyEdgePreprocessor": "canny",
    "OpenposePreprocessor": "openpose",
    "DWPreprocessor": "openpose",
    "MiDaS-DepthMapPreprocessor": "depth_midas",
    "Zoe-DepthMapPreprocessor": "depth_zoe",
    "LeReS-DepthMapPreprocessor": "depth_leres",
    "BAE-NormalMapPreprocessor": "normal_bae",
    "HEDPreprocessor": "hed",
    "PiDiNetPreprocessor": "pidi",
    "TEEDPreprocessor": "teed",
    "M-LSDPreprocessor": "mlsd",
    "LineArtPreprocessor": "lineart",
    "AnimeLineArtPreprocessor": "lineart_anime",
    "LineartStandardPreprocessor": "lineart_standard",
    "AnyLineArtPreprocessor_aux": "anyline",
    "MediaPipe-FaceMeshPreprocessor": "mediapipe_face",
    "ShufflePreprocessor": "shuffle",
}


def link_of(value: Any) -> tuple[str, int] | None:
    """The node id and output index a `[node id, output index]` input points to."""
    if isinstance(value, list) and len(value) == 2 and type(value[0]) in (str, int) and as_int(value[1]) is not None:
        return str(value[0]), value[1]
    return None


def settings_of(inputs: dict[str, Any]) -> dict[str, Any]:
    """A node's inputs that are values, not links."""
    return {key: value for key, value in inputs.items() if link_of(value) is None}


class Graph:
    def __init__(self, text: str) -> None:
        data = json_object(text, "comfyui")
        if len(data) > MAX_NODES:
            raise MetadataError(
                f"The file's ComfyUI graph has {len(data):,} nodes; Atelier reads at most {MAX_NODES:,}."
            )
        self.nodes: dict[str, tuple[str, dict[str, Any]]] = {}
        for node_id, node in data.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise MetadataError(f"Node {node_id!r} of the file's ComfyUI graph has no class_type.")
            if not isinstance(node.get("inputs"), dict):
                raise MetadataError(f"Node {node_id!r} of the file's ComfyUI graph has no inputs object.")
            self.nodes[node_id] = (node["class_type"], node["inputs"])
        self.used: set[str] = set()

    def name(self, node_id: str) -> str:
        return f"{self.nodes[node_id][0]}#{node_id}"

    def kind(self, node_id: str) -> str:
        return self.nodes[node_id][0]

    def inputs(self, node_id: str) -> dict[str, Any]:
        return self.nodes[node_id][1]

    def follow(self, node_id: str, name: str) -> tuple[str, int] | None:
        """Where input `name` of a node links to, if to a node of this graph."""
        link = link_of(self.inputs(node_id).get(name))
        return link if link is not None and link[0] in self.nodes else None

    def chain(self, node_id: str, name: str, through: dict[str, str]) -> Iterator[tuple[str, int]]:
        """The nodes input `name` leads to, continuing along `through[class]` inputs, each node once."""
        seen: set[str] = set()
        current = self.follow(node_id, name)
        while current is not None and current[0] not in seen and len(seen) < MAX_HOPS:
            seen.add(current[0])
            yield current
            onward = through.get(self.kind(current[0]))
            current = self.follow(current[0], onward) if onward else None

    def upstream_samplers(self, node_id: str) -> set[str]:
        """The samplers whose output reaches this sampler's latent input, along any links."""
        found: set[str] = set()
        seen: set[str] = set()
        start = self.follow(node_id, "latent_image")
        todo = [start[0]] if start else []
        while todo and len(seen) < MAX_NODES:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if self.kind(current) in SAMPLERS:
                found.add(current)
                continue
            todo += [
                link[0] for value in self.inputs(current).values() if (link := link_of(value)) and link[0] in self.nodes
            ]
        return found

    def mark(self, node_id: str) -> None:
        self.used.add(node_id)
