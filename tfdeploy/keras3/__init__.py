"""The bridge between Keras 3 (``import keras``, what TF 2.16+ users save) and tf-keras
(what TFMOT and so every training stage needs).

A Keras 3 functional or Sequential model of built-in layers is rebuilt in tf-keras layer by
layer from its config, every weight copied by its path; a stage's tf-keras model goes back
the same way. What cannot cross (a custom or subclassed layer, a Lambda, a Keras op called
on tensors, a nested model) is refused with one line naming the layer, its class and why.
"""
from tfdeploy.keras3.convert import max_difference, outputs, to_keras3, to_tf_keras  # noqa: F401
