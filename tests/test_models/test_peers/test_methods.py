"""The fine-tuning methods behind one wrapper (mmslora/models/peers/methods.py): one
table of methods x backbones, each checked the same way (built from a toolbox registry,
pretrained at init, only the method's parameters train, frozen backbone bitwise
unchanged), and the switches."""

import pytest
import torch
import torch.nn as nn

from mmslora.models import MSLoRAAdapter, MSLoRABackbone, count_parameters
from mmslora.models.peers import METHODS, BottleneckAdapter, LoRA, MonaAdapter, wrapper_kwargs
from mmslora_testing import PEER_BACKBONES, assert_same_outputs, build_in_scope, build_method, flat

METHOD_NAMES = list(METHODS)
ADAPTER_CLASSES = dict(lora=LoRA, adapter=BottleneckAdapter, mona=MonaAdapter, mslora=MSLoRAAdapter)
# the zero-initialised weight of each adapter: it must move on the first step
ZERO_INIT = dict(
    lora='lora_B.weight', adapter='up.weight', mona='up.weight', mslora='proj.up.weight'
)


@pytest.fixture(params=PEER_BACKBONES, ids=[b[0] for b in PEER_BACKBONES])
def backbone_case(request):
    return request.param[1:]


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_pretrained_at_init_and_parameters_reported(method, backbone_case):
    scope, cfg = backbone_case
    model = build_method(method, scope, cfg)
    assert isinstance(model, MSLoRABackbone)
    plain = build_in_scope(scope, cfg)
    prefix = 'backbone.'
    backbone_state = {
        k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)
    }
    assert all(k.startswith((prefix, 'adapters.')) for k in model.state_dict())
    plain.load_state_dict(backbone_state, strict=True)  # keys unchanged by the method
    trainable = dict(model.backbone.named_parameters())
    for name, param in plain.named_parameters():
        param.requires_grad_(trainable[name].requires_grad)
    assert_same_outputs(model, plain, torch.randn(2, 3, 64, 64))

    report = count_parameters(model)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_adapters = sum(p.numel() for p in model.adapters.parameters())
    assert report.backbone == n_backbone and report.adapter == n_adapters
    expected = dict(
        full=n_backbone,
        linear_probe=0,
        bitfit=sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith('bias')),
    ).get(method, n_adapters)
    assert report.backbone_trainable == report.trainable == expected
    assert report.backbone_share == pytest.approx(expected / n_backbone)
    if method in ADAPTER_CLASSES:
        assert len(model.adapters) > 0
        assert all(isinstance(a, ADAPTER_CLASSES[method]) for a in model.adapters.values())
    else:
        assert len(model.adapters) == 0
    print(
        f'{method}: {report.backbone_trainable:,d} trainable, '
        f'{100 * report.backbone_share:.2f}% of the backbone'
    )


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_only_the_methods_parameters_train(method, backbone_case, device):
    scope, cfg = backbone_case
    model = build_method(method, scope, cfg).to(device)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_names = {f'backbone.{n}' for n, _ in model.backbone.named_parameters()}
    adapter_names = {n for n, _ in model.named_parameters() if n.startswith('adapters.')}
    expected = dict(
        full=backbone_names,
        linear_probe=set(),
        bitfit={n for n in backbone_names if n.endswith('bias')},
    ).get(method, adapter_names)
    assert names == expected and (expected or method == 'linear_probe')

    x = torch.randn(2, 3, 64, 64).to(device)
    model.eval()
    with torch.no_grad():
        last = flat(model(x))[-1]
    head = nn.Linear(last.shape[1], 3).to(device)  # trains in every method, alone in a linear probe
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before_adapters = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    head_before = head.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        outs = flat(model(x))
        loss = sum(t.pow(2).mean() for t in outs) + head(outs[-1].mean((2, 3))).pow(2).sum()
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad <= expected and bool(with_grad) == bool(expected)
        opt.step()
    assert not torch.equal(head.weight, head_before)

    after = model.backbone.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(after[k], v)}
    if method == 'full':
        assert changed
    else:  # bitwise: weights and running statistics
        trained = {n[len('backbone.') :] for n in expected if n.startswith('backbone.')}
        assert changed <= trained
        assert bool(changed) == bool(trained)
    if method in ZERO_INIT:
        for key in model.adapters:  # every adapter was reached through its hook
            name = f'{key}.{ZERO_INIT[method]}'
            assert not torch.equal(model.adapters.state_dict()[name], before_adapters[name]), name


def test_full_fine_tuning_lets_norms_follow_train():
    model = build_method(
        'full', 'mmpretrain', dict(type='mmpretrain.ResNet', depth=18, init_cfg=None)
    )
    model.train()
    bns = [m for m in model.backbone.modules() if hasattr(m, 'running_mean')]
    assert bns and all(m.training for m in bns)
    assert all(p.requires_grad for p in model.backbone.parameters())
    frozen = build_method(
        'bitfit', 'mmpretrain', dict(type='mmpretrain.ResNet', depth=18, init_cfg=None)
    )
    frozen.train()
    assert not any(m.training for m in frozen.backbone.modules() if hasattr(m, 'running_mean'))


def test_wrapper_kwargs_and_invalid_switches():
    kwargs = wrapper_kwargs('lora', adapter=dict(rank=4))
    assert kwargs['adapter'] == dict(type='mmslora.LoRA', rank=4, alpha=8)
    assert METHODS['lora']['adapter']['rank'] == 8  # the table is not modified
    assert wrapper_kwargs('mslora', adapter=None)['adapter'] is None
    assert wrapper_kwargs('bitfit', trainable=('bias', 'norm'))['trainable'] == ('bias', 'norm')
    with pytest.raises(KeyError, match='unknown method'):
        wrapper_kwargs('prompt')
    with pytest.raises(ValueError, match='has no adapter'):
        wrapper_kwargs('bitfit', adapter=dict(rank=4))
    with pytest.raises(ValueError, match='no meaning with freeze=False'):
        MSLoRABackbone(
            backbone=PEER_BACKBONES[0][2], adapter=None, freeze=False, trainable=('bias',)
        )
    with pytest.raises(TypeError, match="`adapter` must be None or a config dict"):
        MSLoRABackbone(backbone=PEER_BACKBONES[0][2], adapter='mslora')
    # omitting `adapter` still means MSLoRA
    default = MSLoRABackbone(backbone=PEER_BACKBONES[0][2])
    assert all(isinstance(a, MSLoRAAdapter) for a in default.adapters.values())
