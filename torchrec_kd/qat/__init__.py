"""Quantization-aware training of embedding tables: fbgemm-exact row fake quantization, sharded lookups."""

from torchrec_kd.qat.fake_quant import fake_quantize_rows, quantize_dequantize_rows

__all__ = ["fake_quantize_rows", "quantize_dequantize_rows"]
