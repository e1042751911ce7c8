"""The networks of the paper as plain `nn.Module`s (VQGAN, quantizers, discriminator + losses, LPIPS, GPT).

They import nothing else of this project: no training loop, no file format, no CLI (tests/test_layout.py)."""


def invalid(what: str, problems: list[tuple[tuple[str, ...], str]]) -> ValueError:
    """One ValueError for a config's problems, each (the fields it involves, what is wrong): the message lists them
    all (a command run by hand), `.keys` and `.what` hold the first one's, so that the config check names the key
    where the user set it (vqgan/config/experiment.py)."""
    error = ValueError(f"invalid {what}: " + "; ".join(text for _, text in problems))
    error.keys, error.what = problems[0]
    return error
