"""cogenesis.calibration: fit the logit-fusion net on real data.

* ``fusion_data``: teacher-forced top-k views of both models on reference texts (`extract`, `CalibrationSet`).
* ``train_fusion``: train (torch, CPU), export for numpy, report held-out loss vs mean/max/single models, plot
  the learned weight by step; ``cogenesis calibrate fusion`` (`add_arguments`, `run`, `main`).

Nothing here is imported by the on-device runtime; torch is needed only to train.
"""
