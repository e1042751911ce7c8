"""The networks of the paper as plain `nn.Module`s (VQGAN, quantizers, discriminator + losses, LPIPS, GPT).

They import nothing else of this project: no training loop, no file format, no CLI (tests/test_layout.py)."""
