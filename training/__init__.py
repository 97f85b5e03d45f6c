"""Training: fine-tune a torchvision ResNet50 on labelled cell folders, evaluate, export to ONNX.

``data`` and ``metrics`` need no torch (``wbc evaluate`` uses them in the runtime install); ``engine``,
``export`` and ``run`` need the ``[train]`` extra.
"""
