"""wbc: a white-blood-cell differential from folders of blood-smear images.

The pure library: sample discovery and validation, OpenCV preprocessing, ONNX Runtime inference,
aggregation, flags and report writers.  Nothing in here imports Prefect, so every step can be called
from a notebook; ``flows/`` wires these functions into Prefect flows.
"""

__version__ = "0.1.0"

from wbcproc.classes import CLASSES, WBC_CLASSES

__all__ = ["CLASSES", "WBC_CLASSES", "__version__"]
