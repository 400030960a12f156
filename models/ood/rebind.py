"""Re-bind an OOD fit to a deterioration checkpoint whose image-free network is unchanged.

``vigil train image-branch`` changes only the image branch of ``deterioration.pt`` (so its
file SHA-256), and ``vigil export ood`` refuses a fit recorded against another file. The
OOD detector is fitted on image-free windows, where the branch contributes exactly zero,
so its fit depends only on the frozen entries. When the old and the new checkpoint carry
the same ``frozen_state_sha256`` (recomputed here from both state dicts, not read from
their metadata), refitting would reproduce the fit bit for bit; this writes the fit with
the new checkpoint's SHA-256 and a ``rebound`` record instead of 13 minutes of refitting.

Usage::

    python -m models.ood.rebind OLD_DETERIORATION.pt [NEW_DETERIORATION.pt [OOD.pt]]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from models.common.checkpoints import read_checkpoint
from models.deterioration.image_branch import frozen_state_sha256
from vigil.errors import ModelError

__all__ = ["rebind_ood"]


def rebind_ood(old_checkpoint: Path, new_checkpoint: Path, ood_checkpoint: Path) -> str:
    """Rewrites ``ood_checkpoint``'s recorded deterioration SHA-256 to ``new_checkpoint``'s.

    Returns:
        The new SHA-256.

    Raises:
        ModelError: The fit was not made on ``old_checkpoint``, or the frozen states differ.
    """
    old_bytes, new_bytes = old_checkpoint.read_bytes(), new_checkpoint.read_bytes()
    payload = torch.load(ood_checkpoint, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    old_sha = hashlib.sha256(old_bytes).hexdigest()
    if meta["deterioration_checkpoint_sha256"] != old_sha:
        raise ModelError(f"{ood_checkpoint} was not fitted on {old_checkpoint}")
    old_state = read_checkpoint(old_checkpoint)["state_dict"]
    new_state = read_checkpoint(new_checkpoint)["state_dict"]
    frozen = frozen_state_sha256(old_state)
    if frozen != frozen_state_sha256(new_state):
        raise ModelError("the image-free networks differ: refit with `vigil train ood`")
    new_sha = hashlib.sha256(new_bytes).hexdigest()
    meta.setdefault("rebound", []).append(
        {"from_deterioration_sha256": old_sha, "frozen_state_sha256": frozen}
    )
    meta["deterioration_checkpoint_sha256"] = new_sha
    torch.save(payload, ood_checkpoint)
    return new_sha


if __name__ == "__main__":  # pragma: no cover - command line
    args = [Path(a) for a in sys.argv[1:]]
    if not 1 <= len(args) <= 3:
        sys.exit("usage: python -m models.ood.rebind OLD.pt [NEW.pt [OOD.pt]]")
    defaults = [Path("models/weights/deterioration.pt"), Path("models/weights/ood.pt")]
    old, new, ood = (*args, *defaults[len(args) - 1 :])
    try:
        sys.stdout.write(f"ood fit rebound to deterioration {rebind_ood(old, new, ood)}\n")
    except ModelError as exc:
        sys.exit(f"error: {exc}")
