from cnnlab.registry import Registry

BLOCKS = Registry("block")
