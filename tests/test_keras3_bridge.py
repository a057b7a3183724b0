"""The Keras 3 <-> tf-keras bridge, layer by layer: every supported layer kind crosses both
ways with the same outputs; what cannot cross is named in one line."""
import numpy as np
import pytest

import tfdeploy  # noqa: F401
from tfdeploy.errors import CheckpointError
from tfdeploy.keras3 import max_difference, to_keras3, to_tf_keras

keras = pytest.importorskip("keras")  # Keras 3: what `import keras` gives beside tf-keras
L = keras.layers
RNG = np.random.default_rng(0)


def round_trip(model, inputs):
    """(Keras 3 -> tf-keras difference, tf-keras -> Keras 3 difference)."""
    rebuilt = to_tf_keras(model, model.name)
    back = to_keras3(rebuilt, model.name)
    assert type(back).__module__.startswith("keras.")
    return max_difference(model, rebuilt, inputs), max_difference(rebuilt, back, inputs)


def one_d():
    x = keras.Input((16, 4), name="seq")
    h = L.Conv1D(8, 3, padding="same", activation="relu")(x)
    h = L.SeparableConv1D(8, 3, padding="same")(h)
    h = L.DepthwiseConv1D(3, padding="same")(h)
    h = L.GroupNormalization(groups=2)(h)
    h = L.ReLU(max_value=6.0)(L.ELU()(L.PReLU()(h)))
    h = L.LeakyReLU(negative_slope=0.1)(h)
    h = L.Cropping1D(1)(L.ZeroPadding1D(1)(L.UpSampling1D()(L.MaxPooling1D()(h))))
    h = L.AveragePooling1D(2)(L.Conv1DTranspose(8, 3, padding="same")(h))
    h = L.Softmax()(L.UnitNormalization()(L.SpatialDropout1D(0.1)(h)))
    return keras.Model(x, L.GlobalMaxPooling1D()(h), name="one_d"), \
        RNG.random((3, 16, 4)).astype("float32")


def two_d():
    x = keras.Input((12, 12, 3), name="img")
    h = L.Conv2D(8, 3, padding="same", use_bias=False)(L.Rescaling(1 / 255.)(x))
    h = L.Activation("swish")(L.BatchNormalization(momentum=0.9)(h))
    h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(h)
    h = L.SeparableConv2D(8, 3, strides=2, padding="same", activation="gelu")(h)
    h = L.Conv2DTranspose(8, 3, strides=2, padding="same")(h)
    h = L.MaxPooling2D()(L.Cropping2D(1)(L.ZeroPadding2D(1)(h)))
    h = L.Permute((2, 1, 3))(L.AveragePooling2D(2)(L.UpSampling2D()(h)))
    flat = L.Dense(8, activation="tanh")(L.Flatten()(h))
    out = L.Concatenate()([L.GlobalAveragePooling2D()(h), flat])
    return keras.Model(x, out, name="two_d"), (RNG.random((3, 12, 12, 3)) * 255).astype(
        "float32")


def merges():
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    outs = [L.Add()([a, b]), L.Subtract()([a, b]), L.Multiply()([a, b]), L.Average()([a, b]),
            L.Maximum()([a, b]), L.Minimum()([a, b]), L.Dot(axes=1)([a, b]),
            L.Reshape((3, 2))(a)]
    return keras.Model([a, b], outs, name="merges"), [RNG.random((3, 6)).astype("float32"),
                                                      RNG.random((3, 6)).astype("float32")]


def attention():
    ids = keras.Input((10,), dtype="int32", name="ids")
    e = L.Embedding(50, 8)(ids)
    q = L.EinsumDense("abc,cd->abd", output_shape=(None, 8), bias_axes="d")(e)
    h = L.Add()([L.Attention()([q, e]), L.AdditiveAttention()([q, e])])
    h = L.MultiHeadAttention(2, 4, dropout=0.1)(*[L.LayerNormalization(epsilon=1e-5)(h)] * 2)
    h = L.ActivityRegularization(l2=0.01)(L.Dropout(0.2)(L.GaussianNoise(0.1)(L.Identity()(h))))
    out = L.Flatten()(L.RepeatVector(2)(L.GlobalAveragePooling1D()(h)))
    return keras.Model(ids, out, name="attention"), RNG.integers(0, 50, (3, 10)).astype("int32")


def shared_and_dict_inputs():
    top, bottom = keras.Input((4,), name="top"), keras.Input((4,), name="bottom")
    dense = L.Dense(3)  # called twice: one layer, two nodes
    out = L.Add()([dense(top), dense(bottom)])
    return keras.Model({"top": top, "bottom": bottom}, out, name="shared"), {
        "top": RNG.random((2, 4)).astype("float32"),
        "bottom": RNG.random((2, 4)).astype("float32")}


def sequential():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu"),
                              L.Dense(3, activation="softmax")], name="seq")
    return model, RNG.random((3, 5)).astype("float32")


@pytest.mark.parametrize("make", [one_d, two_d, merges, attention, shared_and_dict_inputs,
                                  sequential])
def test_layers_cross_both_ways_with_the_same_outputs(make):
    model, inputs = make()
    there, back = round_trip(model, inputs)
    assert there <= 1e-5 and back <= 1e-5, (there, back)


def refused(model):
    with pytest.raises(CheckpointError) as caught:
        to_tf_keras(model, "my.keras")
    message = str(caught.value)
    assert "\n" not in message and "inbound_nodes" not in message and "{" not in message
    return message


def test_what_cannot_cross_is_named():
    x = keras.Input((4,), name="x")
    lam = keras.Model(x, L.Lambda(lambda t: t * 2, name="twice")(x))
    assert "'twice' (Lambda)" in refused(lam)
    op = keras.Model(x, keras.ops.relu(L.Dense(2)(x)))
    assert "a Keras op" in refused(op)
    inner = keras.Sequential([keras.Input((4,)), L.Dense(2)], name="block")
    nested = keras.Model(x, inner(x))
    assert "'block' (Sequential) is a nested model" in refused(nested)

    class Mine(keras.Model):
        def call(self, t):
            return t

    message = refused(Mine())
    assert "subclassed Mine" in message and "post-training" in message
    rms = keras.Model(x, L.LayerNormalization(rms_scaling=True, name="norm")(x))
    assert "'norm' (LayerNormalization) sets rms_scaling=True" in refused(rms)


def test_weights_that_do_not_fit_are_named():
    import tf_keras

    source = keras.Sequential([keras.Input((4,)), L.Dense(2, name="head")])
    target = tf_keras.layers.Dense(3, name="head")
    target.build((None, 4))
    from tfdeploy.keras3 import convert, layers

    with pytest.raises(CheckpointError, match="'head' weight (kernel|bias) has shape"):
        convert.copy_weights(source.get_layer("head"), target, layers.keras3(),
                             layers.tf_keras(), "my.keras")
