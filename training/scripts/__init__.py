"""Entry points a person (or a device call) runs; the library they call is the rest of :mod:`training`.

=====================================  =========================  ==========================================
``python -m training.scripts.X``        needs                      what for
=====================================  =========================  ==========================================
``gpu_train``                           torch, torchvision, numpy  train from a packed cache on a bare GPU machine
                                        (no OpenCV)                -> fp16 weight shards + train_info.json
``select_recipe``                       standard library           the device scripts' recipe choice
``evalpack``                            OpenCV (wbcproc)           pack a labelled set for scoring on the GPU
``bccd_crops``                          OpenCV (wbcproc)           BCCD's labelled white cells as class folders
``simulate_lab``                        OpenCV (wbcproc)           another-laboratory stand-ins from PBC cells
``make_replay``                         onnx, onnxruntime          ``<model>.replay.npz`` for ``wbc adapt``
``refresh_guard``                       onnx, onnxruntime          refit ``domain.uncertainty`` + ``confusion_val``
``float_reference``                     onnxruntime, OpenCV        ``tests/fixtures/float_reference.json``
=====================================  =========================  ==========================================

Shell scripts for one device call each (see ``models/card.md`` for how the shipped models were made):
``gpu_generalise.sh`` (choose a recipe on an unseen lab, then train it; 1.1.0) and ``gpu_twins.sh``
(every recipe trained with and without the other lab, the full run kept by its twin's score).

Everyday training is ``wbc train`` / ``wbc adapt`` / the ``retrain`` flow (``flows/``), not these.
"""
