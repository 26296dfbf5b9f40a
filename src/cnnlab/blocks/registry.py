from cnnlab.core.registry import Registry

BLOCKS = Registry("block")
