"""ImageNet-style pretraining of SOFT backbones (timm 1.x, PyTorch); its checkpoints feed Detectron2.

Uses soft_d2.model and timm only, never the Detectron2 side (see shared design).
"""
