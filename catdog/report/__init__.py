"""Reports a person can look at: PNG pictures in ``report/`` and a self-contained ``report.html`` (pictures embedded,
opens from disk with no server and no network).

- a training run: curves per epoch (unfreeze epoch marked), validation confusion matrix, the most confident mistakes,
  reliability before and after temperature scaling with the expected calibration error, ROC with AUC (two classes);
- a k-fold run: the same from the out-of-fold predictions (each fold's temperature on its own rows), every fold's
  validation curve, and the per-fold table;
- a sweep: the optimized metric against each override that varies, ``summary.png`` beside ``summary.md``;
- ``predict.py labelled=true``: the evaluation pictures of the labelled images.

``python -m catdog.report FOLDER`` (re)builds the report of a run, k-fold or sweep folder. ``report/summary.json``
holds the numbers behind the pictures.
"""
