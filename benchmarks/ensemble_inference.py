"""A cross-fitted run's fold ensemble at inference: each member run whole against one shared pass
through the frozen prefix, measured in one run.

Usage: .venv/bin/python benchmarks/ensemble_inference.py [--members 5] [--strategy partial] [--image-size 224]
                                                         [--batch-size 32] [--repeats 3] [--device auto]

Builds ``--members`` networks as ``medxfer train`` does (``build_network``: EfficientNet-Lite0 with
its packaged ImageNet weights and the strategy's frozen stages), then moves every trainable
parameter of each member by a little noise, as fold training would: the frozen prefix stays the
same weights in every member. On one batch of random network inputs it times
``combined_logits`` with each member run whole (what a cross-fitted run cost before the prefix
was shared) and with the shared prefix ``find_shared_prefix`` finds (what ``TrainedRun.logits``
does), interleaved, best of ``--repeats`` each, and prints images per second of both, their
ratio, the prefix's share of one network's time, and the largest difference between the two
outputs (they compute the same thing).
"""

from __future__ import annotations

import argparse
import time

import torch

from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.runs.trained_run import combined_logits, find_shared_prefix
from medxfer.pipeline.runtime.device import resolve_device
from medxfer.pipeline.training.network import build_network


def members(n: int, strategy: str, device: torch.device) -> list[torch.nn.Module]:
    """``n`` networks with the same frozen prefix and differently moved trainable parameters."""
    config = load_config(None, {"strategy": strategy})
    networks = []
    for seed in range(n):
        network = build_network(config, 2)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in network.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-2)
        networks.append(network.to(device).eval())
    return networks


def seconds(fn, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--strategy", default="partial", choices=("linear", "partial"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    networks = members(args.members, args.strategy, device)
    shared = find_shared_prefix(networks)
    if shared is None:
        raise SystemExit("the members share no prefix: nothing to compare")
    prefix = shared[0]
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    stages = next(k for k in range(len(networks[0].info.stages) + 1, 0, -1)
                  if split_backbone(networks[0], k)[0].state_dict().keys() == prefix.state_dict().keys())
    with torch.no_grad():
        difference = (combined_logits(networks, x) - combined_logits(networks, x, shared)).abs().max().item()
    whole, once, one_network, prefix_alone = [], [], [], []
    seconds(lambda v: combined_logits(networks, v, shared), x)  # warm-up
    for _ in range(args.repeats):
        whole.append(seconds(lambda v: combined_logits(networks, v), x))
        once.append(seconds(lambda v: combined_logits(networks, v, shared), x))
        one_network.append(seconds(networks[0], x))
        prefix_alone.append(seconds(prefix, x))
    n, n_stages = args.batch_size, len(networks[0].info.stages)
    part = "the whole backbone" if stages > n_stages else f"the first {stages} of {n_stages} stages"
    print(f"{args.members} members, EfficientNet-Lite0 {args.strategy} at {args.image_size} px, batch {n}, {device}, "
          f"{torch.get_num_threads()} threads; shared prefix: {part} "
          f"({min(prefix_alone) / min(one_network):.0%} of one network's time); one network alone "
          f"{n / min(one_network):.1f} img/s")
    print(f"each member whole:  {n / min(whole):8.1f} img/s")
    print(f"shared prefix once: {n / min(once):8.1f} img/s")
    print(f"ratio {min(whole) / min(once):.2f}x faster; largest difference in logits {difference:.2e}")


if __name__ == "__main__":
    main()
