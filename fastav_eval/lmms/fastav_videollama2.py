"""``lmms-eval --model fastav_videollama2``: VideoLLaMA2.1-7B-AV, the FastAV paper's model, soundtracks fed.

``prune=fastav`` (the default) is the paper's setting: the global stage at half the depth (layer 14 of 28) keeps
every video token and the first 10 audio tokens, then the fine stage drops P = 20% before every later layer.
"""

from __future__ import annotations

from fastav_eval.lmms.wrapper import FastAVLMM
from fastav_eval.models.videollama2 import VideoLLaMA2Adapter


class FastAVVideoLLaMA2(FastAVLMM):
    adapter_class = VideoLLaMA2Adapter
