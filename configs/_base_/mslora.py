# Shared by every mmslora config: import the plug-in and give the adapter defaults.
# A config inherits this beside its upstream base:
#     _base_ = ['mmdet::<upstream config>.py', '../_base_/mslora.py']
custom_imports = dict(imports=['mmslora'], allow_failed_imports=False)

# MSLoRA after every block: D = 64 low-rank width, G = 8 groups (mmslora's defaults,
# under 5% of R-50, Swin-T and ViT-B).
mslora_adapter = dict(type='mmslora.MSLoRAAdapter', hidden_dim=64, groups=8)

# The wrapper that replaces a base config's backbone; give it the base's backbone:
#     model = dict(backbone=dict(_base_.mslora_backbone, backbone=_base_.model.backbone))
mslora_backbone = dict(_delete_=True, type='mmslora.MSLoRABackbone', adapter=mslora_adapter)

# Fine-tuning recipe for adapters: AdamW on the trainable parameters only (frozen
# ones never reach the optimizer). lr 1e-4 / weight decay 0.05 is the recipe that
# Mona (CVPR 2025), the closest peer, uses for detection; the MSLoRA paper's text
# available to us does not state its optimiser, so this is our choice.
mslora_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='mmslora.TrainableOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
