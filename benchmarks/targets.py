"""Targets more than one benchmark judges, defined once so every results file uses the same bar."""

from __future__ import annotations

# int4 student's serving samples/s at batch 2048 over the fp32 teacher's: the production target
# (suite.py judges it on inference_memory.py's numbers, production_student.py on its own one-thread timing)
INT4_SPEEDUP = 8.0
INT4_SPEEDUP_TARGET = f"int4 student / teacher samples/s at batch 2048 >= {INT4_SPEEDUP:g}"
