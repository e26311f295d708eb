import numpy as np

from domainbed.lib import misc


def _hparams(algorithm, dataset, random_seed):
    table = {}

    def add(name, default, sampler):
        table[name] = (default, sampler(np.random.RandomState(misc.seed_hash(random_seed, name))))

    add("lr", 1e-3, lambda r: float(10 ** r.uniform(-4, -2)))
    add("weight_decay", 0.0, lambda r: 0.0)
    add("batch_size", 8, lambda r: 8)
    add("resnet_dropout", 0.0, lambda r: 0.0)
    add("freeze_bn", False, lambda r: False)
    add("class_balanced", False, lambda r: False)
    return table


def default_hparams(algorithm, dataset):
    return {name: pair[0] for name, pair in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm, dataset, seed):
    return {name: pair[1] for name, pair in _hparams(algorithm, dataset, seed).items()}
