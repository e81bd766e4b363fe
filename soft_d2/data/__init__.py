"""Built-in synthetic data shared by the trainers (no Detectron2, no torch): the SOFT shapes images."""
