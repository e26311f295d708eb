import torch

ALGORITHMS = ["ERM"]


class Algorithm(torch.nn.Module):
    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__()
        self.hparams = hparams


class ERM(Algorithm):
    pass


def get_algorithm_class(algorithm_name):
    if algorithm_name not in globals():
        raise NotImplementedError(algorithm_name)
    return globals()[algorithm_name]
