"""What passes compute from a model without changing it.

The per-op quantization plans (`rules`), the cost of ops and of an emitted model
(`cost`), what calibration keeps of a value's data (`observers`) and what quantizing
each unit costs the outputs, measured on clones (`sensitivity`).
"""
