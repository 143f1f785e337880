"""Train a catdog classifier: python train.py experiment=vgg16_bn data.dir=PATH (see conf/train.yaml)."""

from catdog.cli.train import main

if __name__ == "__main__":
    main()
