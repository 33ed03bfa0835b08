"""``lmms-eval --model fastav_qwen2_5_omni``: the Qwen2.5-Omni thinker (7B default, 3B alike), soundtracks fed."""

from __future__ import annotations

from fastav_eval.lmms.wrapper import FastAVLMM
from fastav_eval.models.qwen2_5_omni import Qwen25OmniAdapter


class FastAVQwen25Omni(FastAVLMM):
    adapter_class = Qwen25OmniAdapter
