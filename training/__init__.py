"""Training: fine-tune a torchvision ResNet50 on labelled cell folders, evaluate, export to ONNX, adapt.

The library (importable, no side effects); what a person runs is ``wbc train`` / ``wbc adapt`` /
``wbc evaluate`` and the ``retrain`` flow, or the scripts in :mod:`training.scripts`.

==================  ===========================  ===============================================================
module              needs                        holds
==================  ===========================  ===============================================================
``recipe``          standard library             the shipped recipe (``SHIPPED``), ``TrainConfig``, augmentation
                                                 presets: every trainer's defaults
``selection``       standard library             the device scripts' recipe-choice rule
``dataset``         numpy (+ OpenCV or Pillow)   ``CachedSet`` and the one cache loader ``load_cache``
``data``            wbcproc (OpenCV)             gather class folders, de-duplicate, split by content hash
``cache``           wbcproc (OpenCV)             ``build_cache``: images through inference's preprocessing
``metrics``         numpy                        accuracy, macro-F1, calibration (``wbc evaluate`` uses it)
``evaluate``        wbcproc (runtime install)    ``wbc evaluate``: the real pipeline on labelled folders
``bccd``            wbcproc (OpenCV)             BCCD's labelled white cells as crops cut like field cells
``simulate``        wbcproc (OpenCV)             another-laboratory stand-ins made from labelled cells
``plots``           OpenCV                       confusion matrix and misclassified-cell PNGs
``model``           torch, torchvision           the ResNet50 (IBN-a option), initialisation, stage freezing
``augment``         torch                        batch augmentation on the training device
``loop``            torch                        the training loop, early stopping, ``predict_logits``
``shards``          torch                        fp16 weight shards (how weights leave a GPU machine)
``export``          torch, onnx, onnxruntime     ONNX export, parity, static int8 quantisation
``run``             torch (``[train]`` extra)    one ``wbc train`` run: cache, train, evaluate, export, sidecar
``adapt``           onnx, onnxruntime            ``wbc adapt``: a laboratory head on the int8 backbone
``float_reference`` onnxruntime, wbcproc         the fixture logits the int8 test compares against
==================  ===========================  ===============================================================
"""
