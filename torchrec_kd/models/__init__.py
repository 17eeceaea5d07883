"""Models built from TorchRec's DLRM arches."""
