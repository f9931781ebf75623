"""Metrics that audit explanations on the model as deployed: faithfulness, localisation, sanity and drift.

- deletion / insertion AUC (Petsiuk et al., 2018): remove (or add back) pixels in the order a map ranks
  them and follow the target's score; a faithful map makes the score fall fast (low deletion AUC) and
  rise fast (high insertion AUC). All steps of one image run through onnxruntime as one batch.
- pointing game (Zhang et al., 2016): the map's maximum, at the original image's size, lies within
  `tolerance` pixels of a ground-truth box.
- randomisation sanity check (Adebayo et al., 2018): randomise the weights of the model file layer by layer
  from the top (cascading) and one layer at a time (independent); a map that barely changes does not
  depend on what the model learned.
- drift: the same images through two model files (e.g. fp32 and its int8 quantisation): agreement of
  top-1 and top-k and the rank correlation of each method's maps.

Maps are compared by magnitude (|map|), so a sign flip does not count as a change, as in Adebayo et al.'s
absolute-value variant.

One module per family: curves (deletion/insertion), pointing, boxes, similarity, sanity, drift.
"""
from .boxes import Box, boxes_for, load_boxes
from .curves import BASELINES, STEPS, Curve, attribution_curves, auc, baseline, deletion_insertion, pixel_order
from .drift import DriftResult, ImageDrift, drift, image_drift, layer_in
from .pointing import POINTING_TOLERANCE, pointing_hit
from .sanity import SANITY_MAX_SPEARMAN, SanityResult, SanityStep, WeightLayer, sanity_check, weight_layers
from .similarity import similarity, spearman, ssim, unit

__all__ = ["BASELINES", "Box", "Curve", "DriftResult", "ImageDrift", "POINTING_TOLERANCE", "SANITY_MAX_SPEARMAN",
           "STEPS", "SanityResult", "SanityStep", "WeightLayer", "attribution_curves", "auc", "baseline",
           "boxes_for", "deletion_insertion", "drift", "image_drift", "layer_in", "load_boxes", "pixel_order",
           "pointing_hit", "sanity_check", "similarity", "spearman", "ssim", "unit", "weight_layers"]
