"""The passes: one registered pass per module, named after it (`fuse.py` is `fuse`).

Beside them, the rewriting they share: dead-code elimination (`dce`), declared rewrite
patterns and their greedy driver (`patterns`), storing weights as integer codes behind a
DequantizeLinear (`weight_quant`) and folding fake-quantized constants (`fake_quant`).
The passes package imports the pass modules, which registers them.
"""
