"""A tiny Qwen2-VL built offline, for tests that train a vision-language model for real on CPU.

Nothing is downloaded: the model is a random-init `Qwen2VLForConditionalGeneration` from a config dict,
the tokenizer a byte-level BPE trained here on generated text and wrapped as `Qwen2Tokenizer` (the class
transformers' AutoTokenizer maps qwen2_vl to), the image and video processors Qwen2-VL's own with small
min/max pixels, and the processor carries Qwen2-VL's chat template. Images are solid colours and
gradients written with PIL; the dataset is ms-swift's multimodal JSONL (`messages` + `images`).

It needs torchvision: transformers 5.x builds no Qwen2VLProcessor without it (the processor checks its
video_processor against VideoProcessorMixin, which exists only with torchvision), and ms-swift's Qwen-VL
template imports qwen_vl_utils, which imports torchvision. Hence the ms-swift-vlm env
(scripts/engine_envs.sh).

Why the special tokens sit at Qwen's own ids (151643-151656): ms-swift 4.6.0's `Qwen2VLTemplate`
(swift/template/templates/qwen.py) hard-codes `image_token_id = 151655` / `video_token_id = 151656` and
expands exactly those ids into one token per merged patch, and the model finds images by
`config.image_token_id` (151655, Qwen2VLConfig's default). The text vocabulary is therefore 151,657
rows, almost all unused by the small BPE; with tied embeddings and hidden size 32 that is 4.9 M
parameters, about 0.1 s a step (batch 2) on CPU.

Run as a script with a python that has torch and transformers (an engine's own env), so the files are
written by the transformers that will read them:

    python tests/tiny_vlm.py OUT_DIR    # OUT_DIR/model (weights, tokenizer, processor), images/, train.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
"""Qwen2-VL's special tokens at the ids its tokenizer gives them (Qwen/Qwen2-VL-2B-Instruct
tokenizer.json added_tokens; Qwen2VLConfig defaults vision_start_token_id 151652, image_token_id 151655,
video_token_id 151656)."""
VOCAB_SIZE = max(SPECIAL_TOKENS.values()) + 1
"""Embedding rows: every id the tokenizer can return."""

PATCH = 14
"""Vision patch side in pixels (Qwen2-VL's)."""
MERGE = 2
"""Patches merged per LLM token side (spatial_merge_size)."""
MIN_PIXELS = 28 * 28 * 4
"""Smallest image area after resizing: 4 LLM tokens."""
MAX_PIXELS = 28 * 28 * 16
"""Largest image area after resizing: 16 LLM tokens (a 112 × 112 image)."""

CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "text_config": {
        "model_type": "qwen2_vl_text", "vocab_size": VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        "tie_word_embeddings": True, "bos_token_id": SPECIAL_TOKENS["<|endoftext|>"],
        "eos_token_id": SPECIAL_TOKENS["<|im_end|>"], "pad_token_id": SPECIAL_TOKENS["<|endoftext|>"],
    },
    "vision_config": {
        "model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2,
        "mlp_ratio": 2, "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2, "in_channels": 3,
    },
    "image_token_id": SPECIAL_TOKENS["<|image_pad|>"],
    "video_token_id": SPECIAL_TOKENS["<|video_pad|>"],
    "vision_start_token_id": SPECIAL_TOKENS["<|vision_start|>"],
    "vision_end_token_id": SPECIAL_TOKENS["<|vision_end|>"],
    "tie_word_embeddings": True,
}  # fmt: skip
"""The tiny model's config.json: a 2-layer Qwen2 decoder of width 32 (4 heads, 2 KV heads, head_dim 8, so
mrope_section sums to 4) and a 2-block ViT of width 32 with Qwen2-VL's patch 14 and merge 2."""


def write_config(directory: Path) -> Path:
    """Only config.json (enough to plan for the model; no torch needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    return directory


CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL-Instruct's chat template without video and numbering (Qwen/Qwen2-VL-2B-Instruct
chat_template.json); ms-swift renders its own qwen2_vl template, transformers' apply_chat_template this."""

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}
"""Solid image colours; each image's answer names its colour."""


def _corpus() -> list[str]:
    """Text the BPE is trained on: the chat scaffolding and the dataset's words."""
    words = [*COLOURS, "gradient", "image", "picture", "colour", "color", "what", "is", "the", "this", "of",
             "system", "user", "assistant", "You", "are", "a", "helpful", "assistant.", "Describe", "It", "is"]  # fmt: skip
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    return lines * 4 + ["0123456789 .,:;!?-\n"] * 4


def build_tokenizer(out: Path):  # noqa: ANN201 - transformers is imported lazily
    """A Qwen2Tokenizer over a small byte-level BPE, Qwen2-VL's special tokens at their Qwen ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = {**model["vocab"], **SPECIAL_TOKENS}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for token, expected in SPECIAL_TOKENS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        assert got == expected, (token, got, expected)
    tokenizer.save_pretrained(out)
    return tokenizer


def build_tiny_qwen2_vl(out: Path, *, seed: int = 0) -> Path:
    """Write a random-init tiny Qwen2-VL with its tokenizer and processor into `out`; returns `out`."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = Qwen2VLConfig(**CONFIG)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(out)
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    image_processor = Qwen2VLImageProcessor(
        size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2
    )
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)  # fmt: skip
    processor.save_pretrained(out)
    return out


def write_images(directory: Path) -> list[Path]:
    """Solid-colour images (one per colour, two sizes) and one gradient, as PNG files."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rgb in COLOURS.items():
        for width, height in ((56, 56), (84, 56)):
            path = directory / f"{name}_{width}x{height}.png"
            Image.new("RGB", (width, height), rgb).save(path)
            paths.append(path)
    gradient = Image.new("RGB", (56, 56))
    gradient.putdata([(4 * x, 4 * y, 128) for y in range(56) for x in range(56)])
    path = directory / "gradient_56x56.png"
    gradient.save(path)
    paths.append(path)
    return paths


def write_dataset(path: Path, images: list[Path], *, repeats: int = 4) -> Path:
    """ms-swift's multimodal JSONL: a user turn with `<image>` and a question, the answer naming the image's
    colour (docs/source_en/Customization/Custom-dataset.md, "Multimodal")."""
    rows = []
    for _ in range(repeats):
        for image in images:
            colour = image.name.split("_")[0]
            rows.append({"messages": [{"role": "user", "content": "<image>What colour is this image?"},
                                      {"role": "assistant", "content": f"It is {colour}."}],
                         "images": [str(image)]})  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_fixture(out: Path) -> dict[str, str]:
    """The model in out/model, the images in out/images and their dataset out/train.jsonl; the paths."""
    model = build_tiny_qwen2_vl(out / "model")
    data = write_dataset(out / "train.jsonl", write_images(out / "images"))
    return {"model": str(model), "data": str(data)}


if __name__ == "__main__":
    print(json.dumps(build_fixture(Path(sys.argv[1]))))
