"""The FastAV pruning engine: layouts, config, rules, the pruned decoder forward, rollout and FLOPs.

Typical use::

    engine = install(model, PruningConfig(profile=PruningProfile.prefix(audio=10)))
    with engine.layout(ModalityLayout.from_segments([[("text", 14), ("video", 676), ("audio", 1496), ("text", 30)]])):
        output = model.generate(inputs_embeds=embeds, max_new_tokens=8)
    print(engine.last_stats.relative_flops(engine.shape))
    engine.uninstall()
"""

from fastav_eval.pruning.config import FINE_RULES, GLOBAL_RULES, PruningConfig
from fastav_eval.pruning.decoder import FastAVDecoder, find_text_model, install, uninstall
from fastav_eval.pruning.flops import DecoderShape, layer_flops, prefill_flops, relative_flops
from fastav_eval.pruning.layout import Modality, ModalityLayout
from fastav_eval.pruning.plan import PrefillPlan, PrefillStats, SampleStats, simulate_prefill
from fastav_eval.pruning.profile import PrefixKeep, PruningProfile
from fastav_eval.pruning.rules import RULES, Chooser, PruneContext, PruneDecision, PruningRule, SampleInfo
from fastav_eval.pruning.scoring import last_query_scores

__all__ = [
    "FINE_RULES",
    "GLOBAL_RULES",
    "RULES",
    "Chooser",
    "DecoderShape",
    "FastAVDecoder",
    "Modality",
    "ModalityLayout",
    "PrefillPlan",
    "PrefillStats",
    "PrefixKeep",
    "PruneContext",
    "PruneDecision",
    "PruningConfig",
    "PruningProfile",
    "PruningRule",
    "SampleInfo",
    "SampleStats",
    "find_text_model",
    "install",
    "last_query_scores",
    "layer_flops",
    "prefill_flops",
    "relative_flops",
    "simulate_prefill",
    "uninstall",
]
