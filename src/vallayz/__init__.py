"""vallayz: link the latent spaces of pre-trained encoders through a shared soil space."""

from vallayz.config import SCHEMA_VERSION, IMPNConfig
from vallayz.method import Capabilities, Method, Objective, TrainableMethod, Tunables
from vallayz.model import IMPN, GateWeights, IMPNOutput
from vallayz.types import Batch, Embeddings, Masks

__version__ = "0.1.0"

__all__ = [
    "IMPN",
    "SCHEMA_VERSION",
    "Batch",
    "Capabilities",
    "Embeddings",
    "GateWeights",
    "IMPNConfig",
    "IMPNOutput",
    "Masks",
    "Method",
    "Objective",
    "TrainableMethod",
    "Tunables",
    "__version__",
]
