"""Checkpoints that resume bit for bit: model, optimiser, schedule, step, curve, and every random
stream (torch, CUDA, the task's data stream, each LSH layer's rotation generator). Written
atomically, so a kill -9 at any moment leaves the previous checkpoint whole."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from reformer_impl.attention.lsh import LSHAttention

CHECKPOINT_FORMAT = 2


class CheckpointMismatch(ValueError):
    """A checkpoint was written for another model, task or training setting than requested."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointDamaged(ValueError):
    """A checkpoint file that cannot be read (truncated, empty, not a checkpoint at all)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload on the CPU (tensors and plain containers only: weights_only loading);
    CheckpointDamaged naming the file when it cannot be read as one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        raise CheckpointDamaged(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else 'empty'})") from None
    if not isinstance(payload, dict):
        raise CheckpointDamaged(f"{path}: not a checkpoint (no step, identity and model in it)")
    # A checkpoint of another format (an older version's) is a mismatch to report, not damage.
    if "format" in payload and payload["format"] != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"{path}: checkpoint format={payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if not {"step", "identity", "model"} <= set(payload) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointDamaged(f"{path}: not a checkpoint (no step, identity and model in it)")
    return payload


def checkpoint_progress(path: Path) -> tuple[int, bool]:
    """(the step a checkpoint reached, whether training finished); (0, False) when there is none.
    One read of the file, whatever the caller needs of it."""
    if not path.exists():
        return 0, False
    payload = load_checkpoint(path)
    return int(payload["step"]), bool(payload.get("finished"))


def check_identity(path: Path, payload: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        have = payload["identity"].get(key)
        if have != want:
            raise CheckpointMismatch(
                f"{path}: checkpoint {key}={have!r} but this run asks for {key}={want!r}; "
                "use another run_id or delete the checkpoint to start over"
            )


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "cuda": None}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def hash_rng_state(model: torch.nn.Module) -> dict[str, Any]:
    """Each LSH layer draws its rotations from its own generator (not in the state dict, not the
    global RNG): save the streams so a resumed run hashes exactly as an uninterrupted one."""
    return {name: m.hash_rng_state() for name, m in model.named_modules() if isinstance(m, LSHAttention)}


def restore_hash_rng(model: torch.nn.Module, state: dict[str, Any]) -> None:
    for name, m in model.named_modules():
        if isinstance(m, LSHAttention) and name in state:
            m.load_hash_rng_state(state[name])


def reset_hash_generators(model: torch.nn.Module) -> None:
    """Restart every LSH layer's rotation stream at its seed, so an evaluation hashes the same each time."""
    for module in model.modules():
        if isinstance(module, LSHAttention):
            module.reset_hash_generator()
