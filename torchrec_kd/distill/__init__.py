"""Distillation: a frozen teacher and a student in one pipelined, sharded model."""
