"""Data on disk: the dataset contract, the ALE screen and its objects (shared with atari_collect), the codes format,
COCO selection/preparation/download. Knows no model."""
