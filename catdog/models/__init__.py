"""The network and how it trains and predicts: torchvision VGG builders, the LightningModule, optimizers and
schedules, precision, test-time augmentation and calibration."""
