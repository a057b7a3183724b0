"""`qat`: quantization-aware training (8-bit), transformer-aware and collaborative.

TFMOT's default scheme quantizes whole models of known layers; a BERT also holds
LayerNorm, softmax and GELU, which have no int8 QuantizeConfig and lose accuracy when
quantized. Our BERT keeps every matmul weight (Q/K/V/output projections, both FFN
matrices, the classifier) in its own ``Dense`` layer, so the stage annotates exactly those
and leaves LayerNorm, softmax and GELU in float; the TFLite converter then emits int8
fully-connected ops with the learned ranges. Embedding tables get int8 weights and a float
output (the int8 file gathers int8 rows). A Dense whose output a layer multiplies with float
activations (attention's V, declared by the layer's ``float_inputs``) keeps int8 weights but
a float output: an int8 V makes the converter emit an int8 BATCH_MATMUL, which XNNPACK does
not run (it measured 1.8x the dynamic-range model's latency).

After ``prune`` the prune-preserving scheme keeps the zeros; after ``cluster`` the
cluster-preserving one keeps the shared values; after both, the sparsity-and-cluster
preserving one. The stage checks afterwards that the structure survived.
"""
from tfdeploy.stages.qat.stage import QAT  # noqa: F401  (registers the stage)
