"""``lmms-eval --model fastav_tiny``: the AV-Synth testbed, runnable anywhere (CPU, no downloads)."""

from __future__ import annotations

from fastav_eval.lmms.wrapper import FastAVLMM
from fastav_eval.models.testbed import TestbedAdapter


class FastAVTiny(FastAVLMM):
    adapter_class = TestbedAdapter
