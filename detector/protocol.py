"""Names of the robustness protocol (seed 002, §6), importable without torch (the CLI's help)."""
from __future__ import annotations

SCENARIOS = ("clean", "jpeg50", "h264", "pgd", "unet", "unet_jpeg50", "unet_h264")
ATTACKS = frozenset({"pgd", "unet", "unet_jpeg50", "unet_h264"})
OVERALL = "all"  # the stream name of a detector's combined, calibrated probability
EXPLAIN_METHODS = ("scorecam", "gradcam")
