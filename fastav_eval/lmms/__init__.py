"""lmms-eval integration: one shared wrapper (``wrapper.py``), its classes made per registered model
(``models.py``, from :mod:`fastav_eval.models.registry`), the import-light entry-point manifest (``registry.py``)
and the one module that reads lmms-eval's internals (``run_record.py``)."""
