"""Target-site AUROC with each domain-adaptation method, and pretrained against random weights.

Usage: .venv/bin/python benchmarks/domain_adaptation.py [--seeds 3] [--epochs 5] [--image-size 96]
                                                       [--dataset phantom|nih|both] [--quick]

Two domain shifts:
- phantom: the two-site cohort of ``medxfer phantom`` (source site-a, CR MONOCHROME1; target
  site-b, DX MONOCHROME2 with its own exposure, noise and blur);
- nih: ``../shared/data/nih-pneumonia-256`` (when present), source PA views, target AP views
  (portable films: a different projection, magnification and exposure).

Patients are split so that no patient is in two roles. The target site's images are split by
patient into an unlabelled half (the only target data adaptation may use) and a labelled test
half; AUROC is measured on that test half, and on held-out source patients for comparison.
Every method trains the same EfficientNet-Lite0 for the same epochs on the same prepared images
(no augmentation, so the methods differ only in adaptation), then:

- ``source only``: partial fine-tuning (last 2 stages and head, layer-wise decay 0.7), no
  adaptation; the frozen stages' BatchNorm statistics are first re-estimated on the source
  images, so that the model holds source statistics;
- ``AdaBN``: that model with its BatchNorm statistics re-estimated on the unlabelled target
  images;
- ``adapters``: residual adapters, norms and head trained (on source images only: a
  parameter-efficient alternative to partial fine-tuning, not an adaptation that sees the target);
- ``DANN``: partial fine-tuning plus a domain classifier through gradient reversal, on source
  and unlabelled target batches, reversal weight ramped from 0 to 1;
- ``random init``: the same network from random weights, all layers trained (the from-scratch
  baseline).

A second table compares the two ways of feeding grayscale (3 replicated channels against a
single-channel first convolution) on the first dataset: AUROC, and training-step speed timed
in alternation at the benchmark's size and at 224 px.
"""

from __future__ import annotations

import argparse
import copy
import csv
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit

from medxfer.datasets import phantom, read_scan
from medxfer.pipeline.models.adaptation import DomainClassifier, adapt_batchnorm, add_adapters, dann_weight, domain_loss
from medxfer.pipeline.models.classifier import XrayClassifier, build_classifier
from medxfer.pipeline.models.finetune import apply_strategy, parameter_groups
from medxfer.pipeline.training.steps import TrainableNet
from medxfer.transforms import XrayPipeline

NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-pneumonia-256"
BATCH = 32


class Domain:
    """Prepared images (N, C, S, S), 0/1 labels and patient ids of one site."""

    def __init__(self, pixels: list[np.ndarray], labels: list[int], patients: list[str]) -> None:
        self.pixels, self.labels, self.patients = pixels, np.array(labels), np.array(patients)

    def subset(self, index: np.ndarray) -> Domain:
        return Domain([self.pixels[i] for i in index], self.labels[index].tolist(), self.patients[index].tolist())

    def split(self, fraction: float, seed: int) -> tuple[Domain, Domain]:
        """Two parts by patient, the second holding about ``fraction`` of the images."""
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        first, second = next(splitter.split(self.labels, self.labels, self.patients))
        return self.subset(first), self.subset(second)


def phantom_domains(n_patients: int) -> tuple[Domain, Domain]:
    with tempfile.TemporaryDirectory() as tmp:
        cohort = phantom.generate_cohort(Path(tmp) / "cohort", n_patients=n_patients, seed=0, n_volumes=0)
        sites: dict[str, tuple[list, list, list]] = {"site-a": ([], [], []), "site-b": ([], [], [])}
        with open(cohort.manifest, newline="") as handle:
            for row in csv.DictReader(handle):
                site = Path(row["path"]).parts[1]
                if site in sites:
                    sites[site][0].append(read_scan(cohort.root / row["path"]).pixels)
                    sites[site][1].append(int(row["label"] == "opacity"))
                    sites[site][2].append(row["patient_id"])
    return Domain(*sites["site-a"]), Domain(*sites["site-b"])


def nih_domains() -> tuple[Domain, Domain]:
    with open(NIH / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    source_patients = {r["patient_id"] for r in rows if r["view"] == "PA"}
    views: dict[str, tuple[list, list, list]] = {"PA": ([], [], []), "AP": ([], [], [])}
    for row in rows:
        if row["view"] == "AP" and row["patient_id"] in source_patients:
            continue  # a patient is in one role only
        views[row["view"]][0].append(read_scan(NIH / row["path"]).pixels)
        views[row["view"]][1].append(int(row["label"] == "PNEUMONIA"))
        views[row["view"]][2].append(row["patient_id"])
    return Domain(*views["PA"]), Domain(*views["AP"])


def prepared(domain: Domain, model: XrayClassifier, image_size: int) -> torch.Tensor:
    pipeline = XrayPipeline(model.input_spec(image_size), "none")
    return torch.stack([pipeline(p) for p in domain.pixels])


def batches(n: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + BATCH] for i in range(0, n, BATCH)]


def auroc(model: XrayClassifier, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x[i : i + 64]).softmax(-1)[:, 1] for i in range(0, len(x), 64)])
    return float(roc_auc_score(y, scores.numpy()))


def train(
    model: XrayClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    *,
    target_x: torch.Tensor | None = None,
) -> float:
    """AdamW with cosine decay over ``epochs``; DANN when ``target_x`` is given. Returns img/s."""
    generator = torch.Generator().manual_seed(seed)
    domain_head = DomainClassifier(model.info.feature_dim) if target_x is not None else None
    # The training engine's DANN network: backbone, head, and the domain classifier behind a
    # gradient-reversal layer.
    net = TrainableNet(model.backbone, model.head, domain_head)
    # Layer-wise decay suits pretrained stages only: new adapters and random weights get one rate.
    pretrained_partial = model.adapter_reduction is None and not all(p.requires_grad for p in model.parameters())
    groups = parameter_groups(model, lr=1e-3, layer_decay=0.7 if pretrained_partial else 1.0)
    if domain_head is not None:
        groups.append({"params": list(domain_head.parameters()), "lr": 1e-3, "name": "domain"})
    optimizer = torch.optim.AdamW(groups)
    steps = epochs * len(batches(len(x), generator))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    step, seen, start = 0, 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        for index in batches(len(x), generator):
            optimizer.zero_grad(set_to_none=True)
            if domain_head is not None:
                pick = torch.randint(len(target_x), (len(index),), generator=generator)
                logits, domain_logits = net(torch.cat([x[index], target_x[pick]]), dann_weight(step / steps))
                loss = F.cross_entropy(logits[: len(index)], y[index]) + domain_loss(domain_logits, len(index))
            else:
                loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            step, seen = step + 1, seen + len(index)
    return seen / (time.perf_counter() - start)


def run_method(method: str, source: Domain, unlabelled: Domain, test: Domain, source_test: Domain,
               args: argparse.Namespace, seed: int, in_channels: int = 3) -> dict[str, tuple[float, float, float]]:
    """{method: (target AUROC, source AUROC, training img/s)} for one training run and seed;
    the ``source only`` run also reports ``AdaBN``, applied to a copy of the same model."""
    torch.manual_seed(seed)
    random.seed(seed)
    weights = "random" if method == "random init" else "imagenet"
    model = build_classifier("efficientnet_lite0", 2, weights=weights, in_channels=in_channels)
    if method == "adapters":
        apply_strategy(add_adapters(model), "adapters")
    else:
        apply_strategy(model, "full" if method == "random init" else "partial", trainable_stages=2)
    x, y = prepared(source, model, args.image_size), torch.as_tensor(source.labels)
    target_x = prepared(unlabelled, model, args.image_size)
    shuffle = torch.Generator().manual_seed(seed)
    if weights == "imagenet":
        # Frozen stages keep ImageNet's BatchNorm statistics unless told otherwise: give them the
        # source site's first, so that the model trains on, and AdaBN later swaps, site statistics.
        adapt_batchnorm(model, x[torch.randperm(len(x), generator=shuffle)].split(64))
    speed = train(model, x, y, args.epochs, seed, target_x=target_x if method == "DANN" else None)
    test_x, source_x = prepared(test, model, args.image_size), prepared(source_test, model, args.image_size)
    results = {method: (auroc(model, test_x, test.labels), auroc(model, source_x, source_test.labels), speed)}
    if method == "source only":
        adapted = copy.deepcopy(model)
        adapt_batchnorm(adapted, target_x[torch.randperm(len(target_x), generator=shuffle)].split(64))
        results["AdaBN"] = (auroc(adapted, test_x, test.labels), auroc(adapted, source_x, source_test.labels), speed)
    return results


def channel_speeds(image_size: int, rounds: int = 3, steps: int = 4) -> dict[int, float]:
    """Median training-step img/s of partial fine-tuning with 3 and 1 input channels, timed in
    alternation so that load on the machine affects both alike."""
    models = {c: apply_strategy(build_classifier("efficientnet_lite0", 2, in_channels=c), "partial") for c in (3, 1)}
    rates: dict[int, list[float]] = {3: [], 1: []}
    for _ in range(rounds):
        for channels, model in models.items():
            optimizer = torch.optim.AdamW(parameter_groups(model, lr=1e-4))
            x, y = torch.randn(BATCH, channels, image_size, image_size), torch.randint(0, 2, (BATCH,))
            model.train()
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            rates[channels].append(steps * BATCH / (time.perf_counter() - start))
    return {c: statistics.median(r) for c, r in rates.items()}


def summary(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def benchmark(name: str, load: Callable[[], tuple[Domain, Domain]], args: argparse.Namespace, channels_table: bool) -> None:
    source_all, target_all = load()
    print(f"\n{name}: source {len(source_all.labels)} images ({source_all.labels.sum()} positive), "
          f"target {len(target_all.labels)} images ({target_all.labels.sum()} positive)")
    methods = ["source only", "AdaBN", "adapters", "DANN", "random init"]
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    channels: dict[int, list[tuple[float, float, float]]] = {3: [], 1: []}
    for seed in range(args.seeds):
        source, source_test = source_all.split(0.25, seed)
        unlabelled, test = target_all.split(0.5, seed)
        for method in ("source only", "adapters", "DANN", "random init"):
            for reported, row in run_method(method, source, unlabelled, test, source_test, args, seed).items():
                results[reported].append(row)
        if channels_table:
            channels[3].append(results["source only"][-1])
            single = run_method("source only", source, unlabelled, test, source_test, args, seed, 1)
            channels[1].append(single["source only"])
    print(f"{'method':<12} {'target AUROC':>16} {'source AUROC':>16}")
    for method, rows in results.items():
        print(f"{method:<12} {summary([r[0] for r in rows]):>16} {summary([r[1] for r in rows]):>16}")
    if channels_table:
        speeds = {size: channel_speeds(size) for size in (args.image_size, 224)}
        print(f"\ngrayscale input (source only, partial fine-tuning), {name}:")
        print(f"{'input':<28} {f'img/s {args.image_size} px':>14} {'img/s 224 px':>13} {'target AUROC':>16} {'source AUROC':>16}")
        for count, rows in channels.items():
            label = "3 channels (replicated)" if count == 3 else "1 channel (folded conv)"
            print(f"{label:<28} {speeds[args.image_size][count]:>14.1f} {speeds[224][count]:>13.1f} "
                  f"{summary([r[0] for r in rows]):>16} {summary([r[1] for r in rows]):>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="splits and initialisations to average (default 3)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per method (default 5)")
    parser.add_argument("--image-size", type=int, default=96, help="network input side, pixels (default 96)")
    parser.add_argument("--dataset", choices=("phantom", "nih", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, small phantom cohort")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; EfficientNet-Lite0 at "
          f"{args.image_size} px, {args.epochs} epochs, {args.seeds} seed(s), mean +- sd over seeds")
    first = True
    if args.dataset in ("phantom", "both"):
        benchmark("phantom two-site cohort (site-a -> site-b)",
                  lambda: phantom_domains(60 if args.quick else 240), args, first)
        first = False
    if args.dataset in ("nih", "both"):
        if NIH.is_dir():
            benchmark("NIH pneumonia (PA -> AP)", nih_domains, args, first)
        else:
            print(f"\n{NIH} not found: NIH part skipped")


if __name__ == "__main__":
    main()
