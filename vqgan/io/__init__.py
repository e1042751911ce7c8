"""Files: atomic writers, hashes, images, model checkpoints, pretrained-weight files, CLI config arguments;
progress bars that stay readable in log files."""
