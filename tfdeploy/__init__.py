"""tfdeploy: a TensorFlow model to deployment, from one YAML recipe.

TFMOT only understands Keras 2, so Keras 2 (tf_keras) is pinned here, before anything can
import TensorFlow. Every module uses ``import tf_keras as keras``; none touches ``tf.keras``.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TF's C++ logging is noise for users; `--verbosity` in run.py raises it again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
