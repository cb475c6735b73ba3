"""The ensemble detector in its tiny config: the real architecture, small enough for CPU.
Loading, saving and the contract every config keeps are in test_factory."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from detector.ensemble import STREAMS, LoRALinear
from detector.factory import create_detector


def test_forward_gives_one_logit_per_stream_and_backward_reaches_the_trained_parts():
    torch.manual_seed(0)
    model, _ = create_detector("ensemble_tiny")
    model.train()
    faces, frames = torch.rand(3, 3, 96, 96), torch.rand(3, 3, 160, 120)
    logits = model(faces, frames)
    assert set(logits) == set(STREAMS) and all(v.shape == (3,) for v in logits.values())
    sum(v.sum() for v in logits.values()).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    # LoRA: adapters and heads learn; the backbone's own weights and all of CLIP stay frozen.
    assert grads["backbone.blocks.0.attn.qkv.lora_b"] is not None
    assert all(grads[f"{head}.fc.weight" if head != "facial_head" else "facial_head.proj.weight"] is not None
               for head in ("texture_head", "facial_head", "fusion_head"))
    assert grads["backbone.blocks.0.attn.qkv.weight"] is None
    assert all(not p.requires_grad for p in model.clip.parameters())
    model.zero_grad()
    model.eval()


def test_lora_adapters_start_as_the_base_layer():
    base = torch.nn.Linear(8, 24)
    lora = LoRALinear.from_linear(base, rank=2, alpha=4.0)
    x = torch.randn(5, 8)
    assert torch.equal(lora(x), base(x))


def test_published_dinov2_and_open_clip_checkpoints_load_offline(tmp_path):
    # Checkpoints in timm's and open_clip's own key names, as their hub files hold them.
    torch.manual_seed(1)
    donor, _ = create_detector("ensemble_tiny")
    plain_backbone = {k: v for k, v in donor.backbone.state_dict().items() if "lora_" not in k}
    save_file({k: v.contiguous() for k, v in plain_backbone.items()}, str(tmp_path / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in donor.clip.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    torch.manual_seed(2)
    model, info = create_detector("ensemble_tiny", dinov2_weights=str(tmp_path / "model.safetensors"),
                                  clip_weights=str(tmp_path / "open_clip_model.safetensors"))
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, donor.backbone.blocks[0].attn.qkv.weight)
    assert torch.equal(model.clip.visual.conv1.weight, donor.clip.visual.conv1.weight)
    assert not info.trained and "model.safetensors" in info.source
