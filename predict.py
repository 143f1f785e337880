"""Predict with a trained checkpoint: python predict.py ckpt=PATH tta=5 (see conf/predict.yaml)."""

from catdog.cli.predict import main

if __name__ == "__main__":
    main()
