# UperNet ViT-B/16 (+ multi-level neck) ADE20K 160k with a frozen ViT-B and MSLoRA
# after every encoder layer (cls token passed through, patch grid from the patch
# embedding). Upstream expects the ViT weights at pretrain/vit_base_patch16_224.pth.
_base_ = ['mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py', '../_base_/mslora.py']

model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))

optim_wrapper = dict(
    _base_.mslora_optim_wrapper,
    optimizer=dict(_base_.mslora_optim_wrapper.optimizer, weight_decay=0.01),
)
