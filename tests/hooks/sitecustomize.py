"""Test hooks into the training CLIs, from the outside: the production code has no switches for them.

A test that needs one runs its command with `conftest.hook_env(...)`, which puts this folder first on PYTHONPATH,
so Python imports this file at start-up in that command and in every process it starts (accelerate's ranks,
Snakemake's jobs). Each hook is off unless its variable is set, and patches a module only once something
imports it (the start-up stays as cheap as without this file):

  VQGAN_TEST_NAN_AT=N          the VQGAN generator loss of step N is NaN (the non-finite guard must stop the run)
  VQGAN_TEST_DUMP_WEIGHTS=DIR  each rank of a VQGAN training writes DIR/rank<r>.json: {"initial", "final",
                               "start_step"}, hashes of G's state and D's parameters after resuming and at the end
  VQGAN_TEST_STEP_DELAY=S      sleep S seconds after every backward pass (so a kill lands mid-run)
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_PATCHES: dict[str, list] = {}  # module name -> patch(module) calls still to make


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        patches = _PATCHES.pop(fullname, None)
        if not patches:
            return None
        spec = importlib.util.find_spec(fullname)  # the import system's own spec (this finder no longer matches)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for patch in patches:
                patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _after_import(name: str, patch) -> None:
    """Call patch(module) right after `name` is first imported (before the importer gets to use it)."""
    if not _PATCHES:
        sys.meta_path.insert(0, _Finder())
    _PATCHES.setdefault(name, []).append(patch)


def _nan_at(step: int):
    def patch(losses):
        original = losses.VQLoss.generator_loss

        def generator_loss(self, x, xrec, qloss, global_step, *args, **kwargs):
            loss, logs = original(self, x, xrec, qloss, global_step, *args, **kwargs)
            return (loss * float("nan"), logs) if global_step == step else (loss, logs)

        losses.VQLoss.generator_loss = generator_loss

    _after_import("vqgan.models.losses", patch)


def _dump_weights(folder: str):
    seen: dict = {}

    def hashes(accelerator) -> dict[str, str]:
        # the VQGAN trainer prepares G first, then D. D's BatchNorm running statistics are left out: DDP broadcasts
        # rank 0's buffers before each forward, so after the last one each rank holds its own last batch's (unused)
        from vqgan.io.hashing import state_dict_hash

        g, d = (accelerator.unwrap_model(m) for m in accelerator._models)
        return {"g": state_dict_hash(g.state_dict()), "d_params": state_dict_hash(dict(d.named_parameters()))}

    def patch_loop(loop):
        resume = loop.CheckpointManager.resume

        def resume_and_hash(self, accelerator):
            resumed = resume(self, accelerator)
            seen.update(initial=hashes(accelerator), start_step=resumed.step)
            return resumed

        loop.CheckpointManager.resume = resume_and_hash

    def patch_accelerate(accelerator_module):
        end = accelerator_module.Accelerator.end_training

        def end_training(self):
            from vqgan.io.files import write_json_atomic

            os.makedirs(folder, exist_ok=True)
            write_json_atomic(os.path.join(folder, f"rank{self.process_index}.json"),
                              {**seen, "final": hashes(self)})
            return end(self)

        accelerator_module.Accelerator.end_training = end_training

    _after_import("vqgan.train.loop", patch_loop)
    _after_import("accelerate.accelerator", patch_accelerate)


def _step_delay(seconds: float):
    def patch(accelerator_module):
        import time

        backward = accelerator_module.Accelerator.backward

        def slow_backward(self, *args, **kwargs):
            backward(self, *args, **kwargs)
            time.sleep(seconds)

        accelerator_module.Accelerator.backward = slow_backward

    _after_import("accelerate.accelerator", patch)


if os.environ.get("VQGAN_TEST_NAN_AT"):
    _nan_at(int(os.environ["VQGAN_TEST_NAN_AT"]))
if os.environ.get("VQGAN_TEST_DUMP_WEIGHTS"):
    _dump_weights(os.environ["VQGAN_TEST_DUMP_WEIGHTS"])
if os.environ.get("VQGAN_TEST_STEP_DELAY"):
    _step_delay(float(os.environ["VQGAN_TEST_STEP_DELAY"]))
