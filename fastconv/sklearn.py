"""fastconv.sklearn: a fastconv model as a scikit-learn transformer, for transfer learning.

A pretrained network cut at one of its layers turns images into feature vectors; a
scikit-learn classifier trained on those vectors is the new head (see docs/transfer-learning.md).
The network's own weights stay frozen: nothing here backpropagates through it.

Needs the ``sklearn`` extra: ``pip install "fastconv[sklearn]"``.
"""
import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, TransformerMixin
except ImportError as err:
    raise ImportError('fastconv.sklearn needs scikit-learn: pip install "fastconv[sklearn]"') \
        from err

from .model import Model

__all__ = ["FeatureExtractor"]

_DATA_FORMATS = (None, "channels_first", "channels_last")


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Images in, the activations of one layer of a fastconv model out, one flat row per image.

    ``model``: a fastconv Model (its weights are not changed). ``layer``: the name of the layer
    whose output is the feature vector (None: the model's output). ``batch_size``: images per
    ``predict`` call (None: all at once). ``data_format``: the layout of image arrays given to
    ``transform`` (None: the model's own).

    ``X`` is either a batch of images, (n, *input shape) in ``data_format``, or the same images
    flattened to (n, values per image), as scikit-learn's datasets hold them. ``fit`` learns
    nothing (the network is already trained): it checks the parameters and ``X``. The output
    of ``transform`` is (n, values in the layer's output) float32.

    >>> import numpy as np, fastconv
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from fastconv.sklearn import FeatureExtractor
    >>> net = fastconv.models.lenet5()
    >>> images, labels = np.random.rand(20, 1, 32, 32), np.arange(20) % 2
    >>> FeatureExtractor(net, layer="pool2").fit_transform(images).shape
    (20, 400)
    >>> clf = make_pipeline(FeatureExtractor(net, layer="fc2"), LogisticRegression())
    >>> clf.fit(images, labels).predict(images[:3]).shape
    (3,)
    """

    def __init__(self, model, layer=None, batch_size=None, data_format=None):
        # Stored as given (scikit-learn's convention: clone and set_params rely on it);
        # checked in fit and transform.
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.data_format = data_format

    def fit(self, X, y=None):
        """Checks the parameters and ``X``; returns self. ``y`` is ignored.

        >>> import numpy as np, fastconv
        >>> from fastconv.sklearn import FeatureExtractor
        >>> extractor = FeatureExtractor(fastconv.models.lenet5(), "fc1")
        >>> extractor.fit(np.zeros((2, 1024))).n_features_in_
        1024
        """
        images = self._images(X)
        self.n_features_in_ = int(np.prod(images.shape[1:]))
        return self

    def transform(self, X):
        """The features of ``X``: (n, values in the layer's output) float32.

        >>> import numpy as np, fastconv
        >>> from fastconv.sklearn import FeatureExtractor
        >>> FeatureExtractor(fastconv.models.lenet5(), "fc1").transform(np.zeros((2, 1024))).shape
        (2, 120)
        """
        images = self._images(X)
        features = self.model.features(images, layer=self.layer, batch_size=self.batch_size,
                                       data_format=self.data_format)
        return features.reshape(len(features), -1)

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns: the layer's name and the column index, ``"fc1_0"`` ...

        >>> import fastconv
        >>> from fastconv.sklearn import FeatureExtractor
        >>> FeatureExtractor(fastconv.models.lenet5(), "fc1").get_feature_names_out()[:2]
        array(['fc1_0', 'fc1_1'], dtype=object)
        """
        self._check_params()
        cut = self.model if self.layer is None else self.model.truncate(self.layer)
        output = cut.outputs[0]
        count = int(np.prod(output.sample_shape))
        return np.array([f"{output.layer.name}_{i}" for i in range(count)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # the features depend on the model and the layer only
        return tags

    # Checks ------------------------------------------------------------------------------------

    def _check_params(self):
        if not isinstance(self.model, Model):
            raise TypeError(f"FeatureExtractor: `model` must be a fastconv Model; received "
                            f"{type(self.model).__name__}")
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise ValueError(f"FeatureExtractor: {self.model.label} must have one input and one "
                             f"output; received {len(self.model.inputs)} inputs and "
                             f"{len(self.model.outputs)} outputs")
        if self.layer is not None:
            if not isinstance(self.layer, str):
                raise TypeError(f"FeatureExtractor: `layer` must be a layer name (str) or None; "
                                f"received {type(self.layer).__name__}")
            self.model.get_layer(self.layer)  # an unknown name raises ValueError listing them
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral)
                                 or size < 1):
            raise ValueError(f"FeatureExtractor: `batch_size` must be None or an integer >= 1; "
                             f"received {size!r}")
        if self.data_format not in _DATA_FORMATS:
            raise ValueError(f"FeatureExtractor: `data_format` must be one of {_DATA_FORMATS}; "
                             f"received {self.data_format!r}")

    def _images(self, X):
        """``X`` checked and shaped as the model's input batch (flat rows are reshaped)."""
        self._check_params()
        array = np.asarray(X)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"FeatureExtractor: `X` must hold real numbers; received dtype "
                            f"{array.dtype}")
        shape = self._sample_shape()
        size = int(np.prod(shape))
        if array.ndim == 2 and array.shape[1] == size and len(shape) > 1:
            return array.reshape((len(array),) + shape)
        if array.shape[1:] == shape:
            return array
        raise ValueError(f"FeatureExtractor: `X` must be shaped (n, {', '.join(map(str, shape))}) "
                         f"or (n, {size}); received shape {array.shape}")

    def _sample_shape(self):
        """One input sample's shape in ``data_format``."""
        shape = self.model.inputs[0].sample_shape
        layout = self.data_format or self.model.data_format
        if len(shape) != 3 or layout == self.model.data_format:
            return shape
        return shape[1:] + shape[:1] if layout == "channels_last" else shape[2:] + shape[:2]
