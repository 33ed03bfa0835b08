"""A tiny random Qwen2.5-Omni thinker and a processor built locally (no hub, no torchvision), for CPU tests.

The processor is transformers' own ``Qwen2_5OmniProcessor`` with a word-level tokenizer carrying the model's
special tokens, the stock ``WhisperFeatureExtractor`` and ``Qwen2VLImageProcessorPil``. Only the video processor
is a stand-in: transformers' ``Qwen2VLVideoProcessor`` needs torchvision, which these machines remove. The stand-in
produces the same shapes and patch order (resize to multiples of 28 px, 2 frames per temporal patch, 2×2 merged
patches); its pixel values are not normalised like the stock one's, which a random model does not care about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BatchFeature,
    PreTrainedTokenizerFast,
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

SPECIAL = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
WORDS = (
    "system user assistant you are qwen a virtual human developed by the team capable of perceiving auditory and "
    "visual inputs as well generating text speech . , ? ! : answer with option's letter from given choices "
    "directly what is in video sound which one how many times does it a b c d yes no dog cat bird car"
)
MEL_BINS = 20
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif item['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tokens = dict.fromkeys(["[UNK]", *CHAT_TOKENS, *SPECIAL.values(), *WORDS.split()])
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([*CHAT_TOKENS, *SPECIAL.values()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL,
    )
    tokenizer.padding_side = "left"
    return tokenizer


class TinyVideoProcessor:
    """Stand-in for ``Qwen2VLVideoProcessor``: frames ``[T, H, W, 3]`` -> ``pixel_values_videos [N, 3·2·14·14]``."""

    patch_size, temporal_patch_size, merge_size = 14, 2, 2
    model_input_names = ("pixel_values_videos", "video_grid_thw")

    def __call__(self, videos: list[np.ndarray], **kwargs) -> BatchFeature:
        pixels, grids = [], []
        unit = self.patch_size * self.merge_size
        for frames in videos:
            frames = np.asarray(frames, dtype=np.float32) / 255.0  # [T, H, W, 3]
            if frames.shape[0] % self.temporal_patch_size:
                frames = np.concatenate([frames, frames[-1:]])
            height, width = (max(unit, frames.shape[i] // unit * unit) for i in (1, 2))
            frames = torch.nn.functional.interpolate(
                torch.from_numpy(frames).permute(0, 3, 1, 2), size=(height, width), mode="bilinear"
            )  # [T, 3, h, w]
            t, h, w = frames.shape[0] // 2, height // self.patch_size, width // self.patch_size
            patches = frames.reshape(t, 2, 3, h // 2, 2, self.patch_size, w // 2, 2, self.patch_size)
            patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * h * w, 3 * 2 * self.patch_size**2)
            pixels.append(patches)
            grids.append([t, h, w])
        return BatchFeature({"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids)})


class TinyOmniProcessor(Qwen2_5OmniProcessor):
    """``Qwen2_5OmniProcessor`` accepting the stand-in video processor (its class check needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def tiny_processor() -> TinyOmniProcessor:
    return TinyOmniProcessor(
        image_processor=Qwen2VLImageProcessorPil(),
        video_processor=TinyVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=MEL_BINS),
        tokenizer=tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_thinker_config(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2_5OmniThinkerConfig:
    tokenizer = tokenizer or tiny_tokenizer()
    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(
            d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, encoder_layers=2, num_mel_bins=MEL_BINS,
            max_source_positions=1500, n_window=100, output_dim=64,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, fullatt_block_indexes=[1], window_size=112,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        **special_token_ids(tokenizer),
    )  # fmt: skip


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The thinker config's placeholder and marker ids, as the tiny tokenizer numbers them."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        audio_token_id=ids("<|AUDIO|>"),
        image_token_id=ids("<|IMAGE|>"),
        video_token_id=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
        user_token_id=ids("user"),
    )


def tiny_thinker(seed: int = 0) -> Qwen2_5OmniThinkerForConditionalGeneration:
    torch.manual_seed(seed)
    return Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config()).eval()


def save_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A folder laid out like ``Qwen/Qwen2.5-Omni-7B``: the full model's config (thinker inside), ``thinker.``
    -prefixed weights plus a talker tensor that loading must ignore, and the tokenizer."""
    thinker = tiny_thinker(seed)
    return save_full_checkpoint(directory, thinker, Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict()))


def save_full_checkpoint(directory: Path, thinker: torch.nn.Module, config: Any) -> Path:
    """``thinker`` saved as a full Omni model's folder: ``config`` (the full model's, thinker inside), the
    ``thinker.``-prefixed weights plus a talker tensor that loading must ignore, and the tiny tokenizer."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    state = {f"thinker.{name}": tensor.contiguous() for name, tensor in thinker.state_dict().items()}
    state["talker.codec_head.weight"] = torch.zeros(2, 2)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    tiny_tokenizer().save_pretrained(directory)
    return directory
