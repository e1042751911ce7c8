"""Files: atomic writers, hashes, images, model checkpoints, pretrained-weight files, CLI config arguments."""
