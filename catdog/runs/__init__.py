"""The run folder: its layout and record files (:mod:`catdog.runs.layout`), the one-process lock
(:mod:`catdog.runs.lock`), the metric history (:mod:`catdog.runs.history`), resume and ``model.init`` checks
(:mod:`catdog.runs.resume`), what ``ckpt=`` names (:mod:`catdog.runs.selection`) and sweep summaries
(:mod:`catdog.runs.sweep`)."""
