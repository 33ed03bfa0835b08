"""A tiny random Qwen3-Omni thinker (mixture of experts, DeepStack on) and a processor built locally, for CPU tests.

The processor is transformers' own ``Qwen3OmniMoeProcessor`` with the word-level tokenizer, feature extractor and
image processor of :mod:`tests.models.omni_fixtures`; the video processor is that module's stand-in at Qwen3-Omni's
16-px patches (the stock one needs torchvision). The thinker's ``position_id_per_seconds`` is 13, as the released
checkpoint's (transformers' config default is 25, its processor's 13).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3OmniMoeConfig,
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tests.models.omni_fixtures import (
    CHAT_TEMPLATE,
    MEL_BINS,
    TinyVideoProcessor,
    save_full_checkpoint,
    special_token_ids,
    tiny_tokenizer,
)

POSITION_ID_PER_SECONDS = 13


class TinyVideoProcessor16(TinyVideoProcessor):
    """The stand-in video processor at Qwen3-Omni's 16-px patches (32-px merged tokens)."""

    patch_size = 16


class TinyQwen3OmniProcessor(Qwen3OmniMoeProcessor):
    """``Qwen3OmniMoeProcessor`` accepting the stand-in video processor (its class check needs torchvision)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)


def tiny_processor() -> TinyQwen3OmniProcessor:
    return TinyQwen3OmniProcessor(
        image_processor=Qwen2VLImageProcessorPil(patch_size=16),
        video_processor=TinyVideoProcessor16(),
        feature_extractor=WhisperFeatureExtractor(feature_size=MEL_BINS),
        tokenizer=tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_thinker_config(tokenizer: PreTrainedTokenizerFast | None = None, **text: int) -> Qwen3OmniMoeThinkerConfig:
    """4 layers of 4 experts (2 per token), DeepStack after layers 0-2; ``text`` overrides text-config sizes."""
    tokenizer = tokenizer or tiny_tokenizer()
    return Qwen3OmniMoeThinkerConfig(
        audio_config=dict(
            d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, encoder_layers=2, num_mel_bins=MEL_BINS,
            max_source_positions=1500, n_window=50, n_window_infer=100, conv_chunksize=500,
            downsample_hidden_size=16, output_dim=64,
        ),
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=4,
            num_experts_per_tok=2, max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3], "interleaved": True,
            },
            **text,
        ),
        position_id_per_seconds=POSITION_ID_PER_SECONDS,
        **special_token_ids(tokenizer),
    )  # fmt: skip


def tiny_thinker(seed: int = 0) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    torch.manual_seed(seed)
    return Qwen3OmniMoeThinkerForConditionalGeneration(tiny_thinker_config()).eval()


def save_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A folder laid out like ``Qwen/Qwen3-Omni-30B-A3B-Instruct``: the full model's config (thinker inside),
    ``thinker.``-prefixed weights plus a talker tensor that loading must ignore, and the tokenizer."""
    thinker = tiny_thinker(seed)
    return save_full_checkpoint(directory, thinker, Qwen3OmniMoeConfig(thinker_config=thinker.config.to_dict()))
