# Shared by every mmslora config: the adapter and optimizer defaults. Inherit it beside
# any upstream config:
#     _base_ = ['mmdet::<upstream config>.py', 'mmslora::_base_/mslora.py']
#
# No `custom_imports` here, on purpose: mmengine refuses a key that two bases both set,
# and many upstream configs set their own `custom_imports` (ConvNeXt, Mask2Former, ...).
# None is needed: every mmslora type below is written `mmslora.<Name>`, and mmengine
# imports `mmslora.registry` (so the whole package) the first time a registry meets the
# scope `mmslora`, before any checkpoint is read; a `mmslora::` name resolves only in a
# process that imported mmslora already.

# MSLoRA after every block, G = 8 groups. No width: the wrapper gives the class default
# (hidden_dim = 64) where it keeps the adapters within 5% of the backbone, and the widest
# width that does elsewhere (logged, and listed in the parameter report). A width given
# here or in your config (`dict(_base_.mslora_adapter, hidden_dim=32)`) is kept.
mslora_adapter = dict(type='mmslora.MSLoRAAdapter', groups=8)

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
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)
