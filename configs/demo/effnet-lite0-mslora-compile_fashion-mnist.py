# The Fashion-MNIST demo compiled: mmengine's `compile` key runs torch.compile
# (inductor) on the model's train_step at the first iteration (about a minute on a
# 2-core CPU, then each iteration runs the compiled graphs). MSLoRABackbone traces as
# one graph with the frozen fast path; the data preprocessor, head and optimizer
# step around it are compiled as upstream writes them.
_base_ = ['./effnet-lite0-mslora_fashion-mnist.py']

compile = True
