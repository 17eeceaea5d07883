"""Training loop and evaluation on top of TorchRec's train pipeline and metrics."""
