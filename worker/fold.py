"""Serving-only rewrite of a model: batch norms (and the ReLU after them) folded into the convolutions."""

from __future__ import annotations

from core.weights import INPUT_SHAPE


def for_inference(model):
    """The same function with each batch norm (and a ReLU after it) folded into the convolution before it.

    At inference a batch norm is a per-channel scale and shift, so it can live in the convolution's
    weights and bias; that saves a full pass over every activation map (most of the default model's
    cost on a CPU at small batches). Models without that pattern come back unchanged.
    """
    import keras
    import numpy as np

    layers = model.layers[1:] if type(model.layers[0]).__name__ == "InputLayer" else model.layers
    if not any(type(layer).__name__ == "BatchNormalization" for layer in layers):
        return model
    folded, index = [keras.Input(INPUT_SHAPE)], 0
    while index < len(layers):
        layer, following = layers[index], layers[index + 1] if index + 1 < len(layers) else None
        kind = type(layer).__name__
        if kind == "Conv2D" and type(following).__name__ == "BatchNormalization":
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
            gamma, beta, mean, variance = (keras.ops.convert_to_numpy(weight) for weight in following.weights)
            scale = gamma / np.sqrt(variance + following.epsilon)
            after = layers[index + 2] if index + 2 < len(layers) else None
            plain_relu = type(after).__name__ == "ReLU" and after.get_config().get("max_value") is None
            config = {**layer.get_config(), "use_bias": True, "name": layer.name,
                      **({"activation": "relu"} if plain_relu else {})}
            convolution = keras.layers.Conv2D.from_config(config)
            convolution.build((None, None, None, kernel.shape[2]))
            convolution.set_weights([kernel * scale, (bias - mean) * scale + beta])
            folded.append(convolution)
            index += 3 if plain_relu else 2
            continue
        if kind == "BatchNormalization" or kind == "Dropout":
            if kind == "BatchNormalization":
                return model  # a batch norm without a convolution before it: leave the model as it is
            index += 1
            continue
        folded.append(layer)
        index += 1
    return keras.Sequential(folded, name=f"{model.name}_inference")
