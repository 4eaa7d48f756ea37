"""Prompt adherence (issue 15): the embedded world's score on drawn pictures, and CLIP from a local folder."""

from pathlib import Path

import pytest
from PIL import Image

from pipelines import embedded
from pipelines.adherence import CLIP, EMBEDDED_WORLD, NO_CLIP, NOTHING_ASKED, AdherenceScorer, embedded_world_score
from pipelines.embedded.world import Scene, render
from pipelines.errors import ModelError


def drawn(shape: str, colour: str, background: str) -> Image.Image:
    return Image.fromarray(render(Scene(shape, colour, background, half=0.3, cx=0.5, cy=0.5)))


def test_a_picture_that_follows_its_prompt_scores_1():
    result = embedded_world_score("a red circle on a blue background", drawn("circle", "red", "blue"))
    assert result["score"] == 1.0
    assert result["checks"] == {
        "shape": {"asked": "circle", "seen": "circle", "match": True},
        "colour": {"asked": "red", "seen": "red", "match": True},
        "background": {"asked": "blue", "seen": "blue", "match": True},
    }


@pytest.mark.parametrize(
    ("picture", "score", "missed"),
    [
        (("square", "red", "blue"), 0.6667, {"shape"}),
        (("circle", "green", "blue"), 0.6667, {"colour"}),
        (("circle", "red", "yellow"), 0.6667, {"background"}),
        (("triangle", "yellow", "black"), 0.0, {"shape", "colour", "background"}),
    ],
)
def test_each_thing_drawn_wrong_costs_its_share(picture, score, missed):
    result = embedded_world_score("a red circle on a blue background", drawn(*picture))
    assert result["score"] == score
    assert {name for name, check in result["checks"].items() if not check["match"]} == missed


def test_only_what_the_prompt_asks_is_checked():
    result = embedded_world_score("a square", drawn("square", "purple", "white"))
    assert result["score"] == 1.0 and set(result["checks"]) == {"shape"}
    assert embedded_world_score("a photo of a dog", drawn("square", "purple", "white")) is None


def test_a_batch_scores_the_mean_of_its_images_each_against_its_own_prompt():
    scorer = AdherenceScorer()
    right, wrong = drawn("circle", "red", "blue"), drawn("square", "red", "blue")
    result = scorer.score(model="embedded", prompts=["a red circle on a blue background"] * 2, images=[right, wrong])
    assert (result.method, result.score) == (EMBEDDED_WORLD, round((1 + 2 / 3) / 2, 4))
    assert [image["score"] for image in result.images] == [1.0, 0.6667]
    lines = scorer.score(
        model="embedded",
        prompts=["a red circle on a blue background", "a red square on a blue background"],
        images=[right, wrong],
    )
    assert lines.score == 1.0


def test_no_score_is_made_up():
    scorer = AdherenceScorer()  # no CLIP configured
    unknown = scorer.score(model="org/some-model", prompts=["a cat"], images=[drawn("circle", "red", "blue")])
    assert (unknown.score, unknown.method, unknown.reason) == (None, None, NO_CLIP)
    assert unknown.to_dict() == {"score": None, "method": None, "images": [], "reason": NO_CLIP}
    vague = scorer.score(model="embedded", prompts=["something nice"], images=[drawn("circle", "red", "blue")])
    assert (vague.score, vague.reason) == (None, NOTHING_ASKED)


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A CLIP model with random weights at toy size, saved as a folder, with the embedded model's tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = embedded.make_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_scores_from_the_folder_named_by_the_setting(tiny_clip_folder):
    import torch
    from transformers import CLIPModel

    from webui.settings import Settings

    settings = Settings.from_env({"ATELIER_ADHERENCE_MODEL": str(tiny_clip_folder)}, env_file=None)
    scorer = AdherenceScorer(clip_model=settings.adherence_model, device="cpu")
    pictures = [drawn("circle", "red", "blue"), drawn("square", "green", "white")]
    prompts = ["a red circle on a blue background", "a green square on a white background"]

    result = scorer.score(model="org/some-model", prompts=prompts, images=pictures)

    assert result.method == CLIP and result.details == {"clip_model": str(tiny_clip_folder)}
    scores = [image["score"] for image in result.images]
    assert all(0 <= score <= 1 for score in scores) and result.score == round(sum(scores) / 2, 4)
    # The same pictures score the same, and a prompt changes the score: the text is read.
    assert scorer.score(model="org/some-model", prompts=prompts, images=pictures) == result
    other = scorer.score(model="org/some-model", prompts=["a zebra!"] * 2, images=pictures)
    assert [image["score"] for image in other.images] != scores
    # Each score is the clamped cosine of the image's and its own prompt's CLIP features.
    model = CLIPModel.from_pretrained(tiny_clip_folder)
    from transformers import CLIPProcessor

    inputs = CLIPProcessor.from_pretrained(tiny_clip_folder)(
        text=prompts[:1], images=pictures[:1], return_tensors="pt", padding=True
    )
    with torch.inference_mode():
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
    text, image = getattr(text, "pooler_output", text), getattr(image, "pooler_output", image)
    cosine = float(torch.nn.functional.cosine_similarity(image, text)[0])
    assert scores[0] == pytest.approx(max(0.0, cosine), abs=1e-3)


def test_a_clip_model_that_is_not_on_disk_is_never_downloaded(tmp_path):
    scorer = AdherenceScorer(clip_model="openai/clip-vit-base-patch32", device="cpu")
    with pytest.raises(ModelError, match="ATELIER_ADHERENCE_MODEL must be a CLIP model"):
        scorer.score(model="org/some-model", prompts=["a cat"], images=[drawn("circle", "red", "blue")])
    empty = AdherenceScorer(clip_model=str(tmp_path), device="cpu")
    with pytest.raises(ModelError, match="never downloaded"):
        empty.score(model="org/some-model", prompts=["a cat"], images=[drawn("circle", "red", "blue")])
