"""What layers and filters see: activations, dead filters, kernels, top-k patches, embeddings and maps.

All of it runs forward-only on onnxruntime with the needed tensors exposed, and folders
are streamed one runtime batch at a time.
"""
from __future__ import annotations

from .activations import Activations, activations, channel_stats
from .common import FeatureError, list_images
from .dead import DeadReport, LayerDead, dead_filters, relu_source
from .embed import (Embedding, Neighbours, distances, embed, grid_assignment, image_map, neighbours,
                    neighbours_grid, scatter_plot, tsne)
from .filters import FilterGrid, filters, find_conv
from .receptive import ReceptiveField, receptive_field, receptive_fields
from .topk import Hit, TopK, to_original_box, top_k

__all__ = ["Activations", "activations", "channel_stats", "FeatureError", "list_images", "DeadReport", "LayerDead",
           "dead_filters", "relu_source", "Embedding", "Neighbours", "distances", "embed", "grid_assignment",
           "image_map", "neighbours", "neighbours_grid", "scatter_plot", "tsne", "FilterGrid", "filters",
           "find_conv", "ReceptiveField", "receptive_field", "receptive_fields", "Hit", "TopK", "to_original_box",
           "top_k"]
