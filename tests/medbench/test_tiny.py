import pytest

from medbench.tiny import build_tiny_model


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_tiny_model_generates_from_image_and_text(tiny_model_dirs, arch):
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dirs[arch])
    processor = AutoProcessor.from_pretrained(tiny_model_dirs[arch])
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is the lung normal?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_unknown_architecture_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        build_tiny_model(tmp_path, "gpt2")  # type: ignore[arg-type]
