"""Model adapters: each one only *describes* a model family to the wrapper and the engine.

An adapter loads the model, turns a batch of (visuals, prompt) into decoder inputs plus a
:class:`~fastav_eval.pruning.ModalityLayout`, names the decoder the engine installs on, and decodes answers.
"""
