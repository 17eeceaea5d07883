"""Serving a student: an export loaded with its input contract (``load_model``), scoring raw rows."""
