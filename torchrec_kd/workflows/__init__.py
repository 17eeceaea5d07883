"""Workflows chain recipes: ``experiment`` runs teacher -> student -> distill -> quantize -> report per seed."""
