"""``load_from`` and resume through MMEngine's Runner give the same model with the frozen
fast path on as with it off (BN folds are recomputed from the loaded weights)."""

import torch
import torch.nn as nn
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmslora  # noqa: F401
from mmslora.models import MSLoRABackbone
from mmslora_testing import ToyRegressor, build_in_scope, wrap

RESNET = dict(type='mmdet.ResNet', depth=18, out_indices=(3,), init_cfg=None)


class _Images(Dataset):
    """8 fixed random 3 x 32 x 32 images with scalar targets."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 3, 32, 32, generator=gen)
        self.y = torch.randn(8, generator=gen)

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], labels=self.y[idx])


class _Head(nn.Module):
    def __init__(self, fast_path):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = build_in_scope(
            'mmdet',
            wrap(
                RESNET,
                adapter=dict(type='mmslora.MSLoRAAdapter', hidden_dim=8, groups=4),
                fast_path=fast_path,
            ),
        )
        self.fc = nn.Linear(512, 1)

    def forward(self, x):
        return self.fc(self.backbone(x)[0].mean((2, 3)))


def _runner(work_dir, fast_path, max_iters, **kwargs):
    return Runner(
        model=ToyRegressor(_Head(fast_path)),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Images(),
            batch_size=4,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e-3, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs,
    )


def _outputs(runner):
    model = runner.model.eval()
    with torch.no_grad():
        return model(_Images().x, mode='tensor')


def _pretend_pretrained(model):
    """Non-default BN statistics and scales, as a pretrained backbone has: a model that
    kept folds of its own initial BNs would not match the loaded one."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=gen) + 0.5)


def test_load_from_and_resume_agree_with_the_fast_path_off(tmp_path):
    runner = _runner(tmp_path / 'train', True, 2)
    _pretend_pretrained(runner.model)
    runner.train()
    ckpt = tmp_path / 'train' / 'iter_2.pth'
    assert isinstance(runner.model.body.backbone, MSLoRABackbone)
    assert runner.model.body.backbone.fast_path_report.folded

    loaded = {}
    for fast in (True, False):
        other = _runner(tmp_path / f'load_{fast}', fast, 2, load_from=str(ckpt))
        _outputs(other)  # folds (and the inference cache) of the initial weights
        other.load_or_resume()
        loaded[fast] = _outputs(other)
    trained = _outputs(runner)
    trained_state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    torch.testing.assert_close(loaded[True], trained, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded[False], trained, rtol=1e-5, atol=1e-6)

    resumed = {}
    for fast in (True, False):
        other = _runner(tmp_path / f'resume_{fast}', fast, 4, load_from=str(ckpt), resume=True)
        other.train()
        assert other.iter == 4
        resumed[fast] = {k: v.clone() for k, v in other.model.state_dict().items()}
    adapters = [k for k in resumed[True] if '.adapters.' in k]
    assert adapters and all(resumed[True][k].isfinite().all() for k in adapters)
    assert any(not torch.equal(resumed[True][k], trained_state[k]) for k in adapters)
    for key in resumed[True]:
        torch.testing.assert_close(resumed[True][key], resumed[False][key], rtol=1e-4, atol=1e-6)
