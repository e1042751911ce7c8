"""Data on disk: the dataset contract, the codes format, COCO selection/preparation/download. Knows no model."""
