"""``catdog-serve ckpt=...``: the models predict.py takes, behind an HTTP endpoint with a web page.

- :mod:`catdog.serving.predictor`: the models in memory, an upload decoded and predicted as ``predict.py`` does (no
  HTTP in it).
- :mod:`catdog.serving.uploads`: what a request may carry, and the HTTP status of each bad input.
- :mod:`catdog.serving.server`: the LitServe API and server, the web page (``static/index.html``) and the body limit.
"""
