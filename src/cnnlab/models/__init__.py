"""Networks: `BlockNet` (Part 1) is built by name through `create_model`."""
from cnnlab.models.blocknet import BlockNet, BlockNetConfig, count_parameters, create_model

__all__ = ["BlockNet", "BlockNetConfig", "create_model", "count_parameters"]
