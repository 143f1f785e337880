"""Export a checkpoint to an ONNX or TorchScript file: python export.py ckpt=PATH format=onnx (see conf/export.yaml)."""

from catdog.cli.export import main

if __name__ == "__main__":
    main()
