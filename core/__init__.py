"""The shared engine: model loading, layouts, backends, visualization and the streaming preprocessor."""

from .preprocessor import OpticalFlowTensorRTPreprocessor
from .visualize import NORMALIZATIONS, flow_to_rgb

__all__ = ["NORMALIZATIONS", "OpticalFlowTensorRTPreprocessor", "flow_to_rgb"]
