"""The small AV-LLM trained on AV-Synth and shipped with the package (weights in ``weights/``)."""

from pathlib import Path

from fastav_eval.testbed.model import PreparedBatch, TestbedConfig, TestbedModel
from fastav_eval.testbed.tokenizer import WordTokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights"

__all__ = ["WEIGHTS_DIR", "PreparedBatch", "TestbedConfig", "TestbedModel", "WordTokenizer"]
