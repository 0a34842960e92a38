"""Tiny random Hugging Face models built from config and saved like a real checkpoint, so
the backends' real `from_pretrained(local_dir)` path runs in seconds without a model hub.
Their outputs are random: tests check mechanics, never words or box positions."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "a the large small red green blue yellow striped dotted solid circle square star triangle image shows "
    "on left right top bottom of in near with background picture there is are and describe this detail"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% if message['content'] is string %} {{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %} <image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "user:", "assistant:"]


def word_tokenizer(specials: list[str], *, unknown: str = "[UNK]", lowercase: bool = False):
    """A word-level fast tokenizer over the test vocabulary (plus punctuation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {token: index for index, token in enumerate([unknown, *specials, *WORDS, ".", ",", "\n"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer.add_special_tokens(specials)
    return tokenizer


def save_tiny_llava(folder: Path, image_size: int = 28) -> Path:
    """A 2-layer LLaVA (CLIP vision tower + Llama) with a word-level tokenizer, a chat
    template and its image processor, saved as a checkpoint folder."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(LLAVA_SPECIALS),
        unk_token="[UNK]",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    patch = 14
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_SPECIALS}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        image_token_id=ids["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # "." also ends a caption, so that random weights write some finished captions
    model.generation_config.eos_token_id = [ids["</s>"], tokenizer.convert_tokens_to_ids(".")]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<s>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_owlv2(folder: Path, image_size: int = 64) -> Path:
    """A 2-layer OWLv2 with a CLIP BPE tokenizer trained on the test vocabulary."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from fgclip.train.tokenizer import build_clip_tokenizer, train_bpe

    vocab, merges = train_bpe([" ".join(WORDS)] * 4 + ["a photo of a"] * 4, vocab_size=400, min_frequency=1)
    tokenizer = build_clip_tokenizer(vocab, merges, model_max_length=16)
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tokenizer
    )
    config = Owlv2Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # the heads start near zero: every box would be the same, every score 0.5
        for name, parameter in model.named_parameters():
            if name.startswith(("box_head", "class_head")):
                parameter.normal_(0.0, 0.5 if name.startswith("box_head") else 0.05)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_grounding_dino(folder: Path) -> Path:
    """A Grounding DINO with a tiny Swin backbone, a 2-layer BERT text encoder with a
    word-level vocabulary, and 2 decoder layers (fewer do not run)."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab_file = folder / "vocab.txt"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=256)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4, image_size=64, out_features=["stage1", "stage2"]
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=30,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
        use_timm_backbone=False,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    vocab_file.unlink()  # the processor saved its own copy of the tokenizer
    return folder
