"""Adapter for Qwen3-Omni (``Qwen/Qwen3-Omni-30B-A3B-Instruct``): transformers' own thinker (a mixture-of-experts
LLM with DeepStack), loaded without the talker or code2wav.

``lmms-eval --model fastav_qwen3_omni``. Requests, media, soundtracks, batching and answers are handled as for
Qwen2.5-Omni (:class:`~fastav_eval.models.qwen2_5_omni.Qwen25OmniAdapter`, whose ``video_audio`` contract and
processor / ``generate`` flags it shares). What differs is the model's:

- **audio in video, token by token**: the thinker merges a video's tokens and its soundtrack's by time, one token
  at a time (a video grid's tokens go before audio token j when the grid's time position is at most j's), not in
  2-s blocks. Each temporal grid (2 frames) and the audio tokens the thinker places after it, up to the next grid,
  are one chunk, so ``video_keep_chunks`` / ``audio_keep_chunks`` and "the first 4 frames" act per grid. The
  processor orders the tokens in float64, the thinker in float32: the frame rate is nudged until both agree, and
  every sample's layout is checked against the processor's ids.
- **timing**: the processor is given the thinker's ``position_id_per_seconds`` and audio ``n_window`` (its defaults,
  13 and 50, are the released checkpoint's, not necessarily a given config's).
- **DeepStack**: vision features are added to the visual positions after the first layers; the engine keeps them
  consistent with any cut (:mod:`fastav_eval.pruning.decoder`).

Sequence of one sample with a 2-s clip::

    <|im_start|>system ... <|im_start|>user <|vision_bos|><|audio_bos|> V V V V A A ... V V V V A A ...
    <|audio_eos|><|vision_eos|> question <|im_end|> <|im_start|>assistant
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fastav_eval.models.base import AdapterArg
from fastav_eval.models.qwen2_5_omni import OmniCheckpoint, Qwen25OmniAdapter
from fastav_eval.pruning.layout import Segment
from fastav_eval.pruning.presets import interleave_by_time

MIN_PIXELS = 128 * 32 * 32  # the processor's shortest_edge (32-px merged tokens)


class Qwen3OmniAdapter(Qwen25OmniAdapter):
    name = "qwen3_omni"
    default_pretrained = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    checkpoint: ClassVar[OmniCheckpoint] = OmniCheckpoint(
        ("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
        "Qwen3OmniMoeThinkerForConditionalGeneration",
        "Qwen3OmniMoeProcessor",
        "Qwen/Qwen3-Omni-30B-A3B-Instruct",
    )
    model_args: ClassVar[dict[str, AdapterArg]] = {
        **Qwen25OmniAdapter.model_args,
        "min_pixels": AdapterArg(MIN_PIXELS, int, "the fewest pixels per frame after resizing (32-px tokens)"),
    }

    def processor_options(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "position_id_per_seconds": config.position_id_per_seconds,
            "n_window": config.audio_config.n_window,
        }

    def audio_token_counts(self, processed: dict[str, torch.Tensor]) -> list[int]:
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        if "feature_attention_mask" not in processed:
            return []
        lengths = processed["feature_attention_mask"].sum(-1)
        return _get_feat_extract_output_lengths(lengths, self.model.config.audio_config.n_window).tolist()

    def _interleaved_block(
        self, processed: dict[str, torch.Tensor], video_index: int, audio_tokens: int, at: int, chunk: dict[str, int]
    ) -> list[Segment]:
        """One audio-in-video block in the thinker's own order (its ``get_rope_index`` merge, in float32 and offset
        by the block's first position ``start``, as it computes it): grid t's video tokens, then the audio tokens
        before grid t + 1, all labelled chunk t (counted on from ``chunk``, advanced here)."""
        config = self.model.config
        t, h, w = processed["video_grid_thw"][video_index].tolist()
        per_grid = h * w // config.vision_config.spatial_merge_size**2
        start = self._block_start(processed, at)
        seconds = processed["video_second_per_grid"][video_index].float()
        grid_times = (torch.arange(t) * seconds * config.position_id_per_seconds).float() + start  # [T]
        audio_times = torch.arange(audio_tokens).float() + start  # [A]
        block = interleave_by_time(grid_times.tolist(), per_grid, audio_times.tolist())  # float32 values, exactly
        segments: list[Segment] = [
            (name, count, chunk[name] + grid, per_grid) if name == "video" else (name, count, chunk[name] + grid)
            for name, count, grid in block
        ]
        chunk["video"] += t
        chunk["audio"] += t
        return segments

    def _block_start(self, processed: dict[str, torch.Tensor], at: int) -> torch.Tensor:
        """The thinker's temporal position of prompt index ``at`` (a block's first token), float32."""
        positions = self.rope_positions(
            {k: v for k, v in processed.items() if k != "pixel_values_videos"}, use_audio_in_video=True
        )  # [3, 1, L]
        return positions[0, 0, at].float()
