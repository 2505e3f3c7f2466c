"""Loop-per-element baselines in the style of the seed post's Python layers, for timing only.

They follow the post's structure: a Python ``for`` over the rows and another over the classes,
one NumPy scalar operation per element, the sigmoid (or softmax) kept in ``self.diff`` between
forward and backward. The formulas are the post's, including its faults (no guard against
``log(0)`` or rows without positives, ``loss_weight`` ignored); do not use them for training.
``caffe_layers`` replaces them.

param_str: a Python-literal dict, as in the post, e.g.
``"{'focusing_parameter': 2, 'class_balances': {'1': 1, '2': 1, ...}}"``; without
``class_balances`` every class gets 1.
"""
import ast

import caffe
import numpy as np


class SeedFocalLoss(caffe.Layer):
    """Sigmoid focal loss, a loop over rows and classes in forward and in backward.

    Bottoms: scores ``(N, C)``, binary labels ``(N, C)``. Top: loss ``()``.
    """

    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str) if self.param_str else {}
        self.focusing_parameter = float(params.get("focusing_parameter", 2))
        num_classes = bottom[0].data.shape[1]
        self.class_balances = params.get("class_balances",
                                         {str(c + 1): 1.0 for c in range(num_classes)})

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        labels = bottom[1].data
        scores = 1 / (1 + np.exp(-bottom[0].data))  # sigmoid activations
        logprobs = np.zeros([bottom[0].num, 1])
        for r in range(bottom[0].num):  # for each element in the batch
            for c in range(len(labels[r, :])):  # for each class: its binary cross-entropy
                if labels[r, c] == 0:  # the loss form for negative classes
                    logprobs[r] += (self.class_balances[str(c + 1)] * -np.log(1 - scores[r, c])
                                    * scores[r, c] ** self.focusing_parameter)
                else:  # the loss form for positive classes
                    logprobs[r] += (self.class_balances[str(c + 1)] * -np.log(scores[r, c])
                                    * (1 - scores[r, c]) ** self.focusing_parameter)
        data_loss = np.sum(logprobs) / bottom[0].num
        self.diff[...] = scores  # the sigmoid, kept for backward
        top[0].data[...] = data_loss

    def backward(self, top, propagate_down, bottom):
        delta = self.diff
        labels = bottom[1].data
        gamma = self.focusing_parameter
        for r in range(bottom[0].num):  # for each element in the batch
            for c in range(len(labels[r, :])):  # for each class
                p = delta[r, c]
                if labels[r, c] == 0:  # d/dx of -p^g log(1 - p)
                    delta[r, c] = self.class_balances[str(c + 1)] * (
                        p ** gamma * (p - gamma * (1 - p) * np.log(1 - p)))
                else:  # d/dx of -(1 - p)^g log(p)
                    delta[r, c] = self.class_balances[str(c + 1)] * (
                        (1 - p) ** gamma * (gamma * p * np.log(p) + p - 1))
        bottom[0].diff[...] = delta / bottom[0].num


class SeedMultiLabelSoftmaxLoss(caffe.Layer):
    """Softmax cross-entropy over multi-hot labels scaled by 1/M, M the row's positives;
    vectorised softmax, then a loop over rows and classes in forward and in backward.

    Bottoms: scores ``(N, C)``, multi-hot labels ``(N, C)``. Top: loss ``()``.
    """

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        labels = bottom[1].data
        scores = bottom[0].data - np.max(bottom[0].data, axis=1, keepdims=True)
        exp_scores = np.exp(scores)
        probs = exp_scores / np.sum(exp_scores, axis=1, keepdims=True)
        logprobs = np.zeros([bottom[0].num, 1])
        for r in range(bottom[0].num):
            num_positive_labels = sum(labels[r] > 0)
            for c in range(len(labels[r])):
                if labels[r, c] != 0:
                    logprobs[r] += -np.log(probs[r, c]) * labels[r, c] / num_positive_labels
        data_loss = np.sum(logprobs) / bottom[0].num
        self.diff[...] = probs
        top[0].data[...] = data_loss

    def backward(self, top, propagate_down, bottom):
        delta = self.diff
        labels = bottom[1].data
        for r in range(bottom[0].num):
            num_positive_labels = sum(labels[r] > 0)
            for c in range(len(labels[r])):
                if labels[r, c] != 0:
                    delta[r, c] -= 1 / num_positive_labels
        bottom[0].diff[...] = delta / bottom[0].num
