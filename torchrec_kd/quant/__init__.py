"""Quantization: fbgemm int8/int4/int2/fp16 tables (``embeddings``), quantization-aware training
(``fake_quant``, ``qat``), the int8-stored frozen teacher (``int8_teacher``) and exports (``export``)."""
