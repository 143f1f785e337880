"""From files on disk to batches: layouts, decoding, the decoded-image cache, splits, transforms, the
LightningDataModule and the demo dataset."""
