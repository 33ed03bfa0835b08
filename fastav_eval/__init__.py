"""FastAV-Eval: FastAV token pruning inside audio-visual LLM decoders, measured on standard benchmarks."""

__version__ = "0.1.0"
