"""Training: the pieces both loops share (loop.py), the launcher, the VQGAN loop and the transformer loop."""
