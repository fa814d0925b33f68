"""The PyTorch model runs end to end on each family's tiny checkpoint, as a Pipeline (models/engines.py)."""

from PIL import Image

from models.engines import torch_pipeline
from runtime.preprocess import preprocess_image
from runtime.sampling import SamplingParams


def test_oracle_generates_deterministically(tiny_ort_checkpoint):
    pipe = torch_pipeline(tiny_ort_checkpoint)
    image = Image.new("RGB", (90, 50), (200, 10, 10))
    first = pipe.run("What colour is the shape?", [image], SamplingParams(max_new_tokens=6))
    second = pipe.run("What colour is the shape?", [image], SamplingParams(max_new_tokens=6))
    assert first.token_ids == second.token_ids
    assert len(first.token_ids) <= 6
    image_ids = first.prompt_ids[first.prompt_ids >= pipe.first_image_id]
    assert len(image_ids) == preprocess_image(image, pipe.spec).num_tokens
