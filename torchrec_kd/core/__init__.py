"""Run-level helpers every layer above may use: the output layout, table keys, budgets, fingerprints, the run lock."""
