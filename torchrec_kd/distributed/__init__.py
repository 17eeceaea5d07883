"""Process groups, sharding and optimizers: one code path for 1 process, N gloo ranks, N GPUs."""
