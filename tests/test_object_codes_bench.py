"""bench/object_codes.py: which codes are a class's object codes, which token cells a box touches, and the three
counts (real, teacher-forced, sampled) on a tiny GPT."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vqgan.data.dataset import read_split, write_split
from vqgan.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("object_codes", ROOT / "bench" / "object_codes.py")
oc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oc)


def test_box_cells_are_the_token_cells_the_box_touches_per_class(tmp_path):
    objects = pd.DataFrame([(0, "ball", 0, 5.0, 3.0, 6.0, 4.0, 1),     # inside cell (0, 1) of a 4x4 grid of 4-px cells
                            (1, "paddle", 0, 3.5, 6.0, 8.5, 7.0, 1),   # crosses cells (1, 0), (1, 1), (1, 2)
                            (1, "ball", 1, 12.0, 12.0, 13.0, 13.0, 0)],  # hidden: not a cell of anything
                           columns=["frame", "class", "id", "x0", "y0", "x1", "y1", "visible"])
    path = write_split(tmp_path / "train", np.zeros((2, 16, 16, 3), np.uint8), pd.DataFrame({"source_id": [0, 1]}),
                       {"split": "train"}, objects=objects)
    cells = oc.class_cells(read_split(path), (4, 4))
    assert sorted(cells) == ["ball", "paddle"]
    assert np.argwhere(cells["ball"]).tolist() == [[0, 0, 1]]
    assert np.argwhere(cells["paddle"]).tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 2]]


def test_object_codes_are_the_codes_mostly_inside_the_class_cells():
    codes = np.array([[5, 5, 5, 1], [5, 2, 2, 1], [7, 7, 7, 1]])
    cells = np.array([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], bool)
    # 5: 3 of 4 inside; 2: 2 of 2 but seen < 3 times; 1: 1 of 3; 7: 1 of 3
    assert oc.object_codes(codes, cells, 8, 0.5).tolist() == [5]
    assert oc.object_codes(codes, cells, 8, 0.8).tolist() == []
    assert oc.object_codes(codes, cells, 8, 0.3).tolist() == [1, 5, 7]


def test_counts_of_a_model_that_always_emits_the_object_code():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=8, n_classes=1, block_size=4, n_layer=1, n_head=1, n_embd=8,
                        dropout=0.0, bias=True)).eval()
    with torch.no_grad():  # every logit but code 3's far below: teacher-forced p(3) = 1 at each of 4 positions
        gpt.transformer.ln_f.weight.zero_()
        gpt.transformer.ln_f.bias.fill_(1.0)
        gpt.transformer.wte.weight.zero_()
        gpt.transformer.wte.weight[3] = 100.0
    grids = np.array([[[3, 0], [0, 0]], [[0, 0], [0, 0]]])
    out = oc.counts(gpt, grids, 0, {"ball": np.array([3])}, [None, 2], 1.0, 0)["ball"]
    assert out["real"] == 0.5 and out["frames_real"] == 0.5
    assert abs(out["teacher_forced"] - 4.0) < 1e-3
    assert out["sampled@none"] == 4.0 and out["frames_sampled@none"] == 1.0 and out["sampled@2"] == 4.0
