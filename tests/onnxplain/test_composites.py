"""Defaults that discriminate: a 224x224 composite of skimage's chelsea (left half) and coffee (right half);
EfficientNet-Lite0's map at each method's defaults puts more positive mass (inside what the model saw) on the
target's object than on the other, for the cat (281, tabby) and the cup (504, coffee mug) classes.

Covered here: the methods that pass at their defaults today, affordable on 2 CPU cores (about 35 s in all).
Not yet covered (issue 19, open): guided-backprop and deconvnet (not class-discriminative by construction,
Nie et al. 2018: their maps barely change with the class), integrated-gradients (cup class fails at the
black baseline), occlusion and smoothgrad-fd (their defaults are still to be retuned)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from onnxplain import Explainer

METHODS = ("cam", "grad-cam", "grad-cam++", "layer-cam", "fullgrad", "saliency")
CAT, CUP = 281, 504


@pytest.fixture(scope="module")
def composite_explainer(effnet):
    cat = cv2.resize(skimage.data.chelsea(), (112, 224), interpolation=cv2.INTER_AREA)
    cup = cv2.resize(skimage.data.coffee(), (112, 224), interpolation=cv2.INTER_AREA)
    return Explainer(effnet, device="cpu", quiet=True), np.concatenate([cat, cup], 1)


@pytest.mark.parametrize("method", METHODS)
def test_default_maps_discriminate_two_objects(method, composite_explainer):
    explainer, photo = composite_explainer
    cat_map, cup_map = explainer.explain([photo, photo], method=method, target=[CAT, CUP])
    for attribution, own in ((cat_map, 0), (cup_map, 1)):
        mass = np.maximum(attribution.heatmap, 0) * attribution.valid
        halves = mass[:, :112].sum(), mass[:, 112:].sum()
        assert halves[own] > halves[1 - own], f"{method} class {attribution.target}: {halves}"
