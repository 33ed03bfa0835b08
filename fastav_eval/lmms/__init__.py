"""lmms-eval integration: one shared wrapper, thin named registrations, and the import-light entry-point manifest."""
