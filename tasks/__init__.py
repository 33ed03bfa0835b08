"""FastAV-Eval's lmms-eval tasks (the YAMLs and data in this folder), installed as ``fastav_eval.tasks``.

Pass the folder to lmms-eval with ``--include_path "$(fastav-eval tasks-path)"``.
"""
