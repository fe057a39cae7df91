"""Run under torchrun: the data-parallel gradient equals one process's gradient on the global batch.

A small network with BatchNorm in both branches and batch-level losses (CMPM and CMPC, whose
classifier is used after the gather; the layers before BatchNorm have no bias, whose gradient
would be zero) computes its gradient with each process holding a slice of the global batch,
through the training loop's parts: ``with_global_batch_norm`` and ``data_parallel``
(DistributedDataParallel); the first process recomputes it alone on the whole batch and compares.
Prints the worst relative difference and exits 1 above the tolerance given as the first argument."""

import sys

import torch

from tbps_bench.distributed import SINGLE, batch_gatherer, data_parallel, start, stop, with_global_batch_norm
from tbps_models.losses import cmpc_loss, cmpm_loss

GLOBAL_BATCH = 9  # 2 processes get slices of 4 and 5 rows


def network() -> torch.nn.ModuleDict:
    torch.manual_seed(0)
    image = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 16),
    )
    text = torch.nn.Sequential(
        torch.nn.Linear(10, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Linear(16, 16)
    )
    classifier = torch.nn.ParameterDict({"weight": torch.nn.Parameter(torch.randn(16, 4))})
    return torch.nn.ModuleDict({"image": image, "text": text, "classifier": classifier})


def gradients(net: torch.nn.ModuleDict, rows: slice, world) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    batch = {
        "pixels": torch.randn(GLOBAL_BATCH, 3, 8, 6, generator=generator)[rows],
        "words": torch.randn(GLOBAL_BATCH, 10, generator=generator)[rows],
        "labels": torch.arange(GLOBAL_BATCH).remainder(4)[rows],
    }
    gather = batch_gatherer(world)

    def losses(inputs):
        image, text, labels = gather((net["image"](inputs["pixels"]), net["text"](inputs["words"]), inputs["labels"]))
        classifier = net["classifier"]["weight"]
        return {"total": cmpm_loss(image, text, labels) + cmpc_loss(image, text, labels, classifier)}

    step = data_parallel(net, losses, world, torch.device("cpu"))
    step(batch)["total"].backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def main() -> int:
    tolerance = float(sys.argv[1])
    world, _ = start("cpu")
    net = with_global_batch_norm(network(), world)
    shared = gradients(net, world.shard(GLOBAL_BATCH, 1), world)
    swapped = sum(type(m).__name__ == "GlobalBatchNorm" for m in net.modules())
    worst = 0.0
    if world.is_main:
        alone = gradients(network(), slice(0, GLOBAL_BATCH), SINGLE)
        for name, expected in alone.items():
            scale = float(expected.abs().max())
            worst = max(worst, float((shared[name] - expected).abs().max()) / max(scale, 1e-12))
        print(f"{swapped} BatchNorm layers swapped for GlobalBatchNorm")
        print(f"worst relative gradient difference over {len(alone)} tensors: {worst:.3g}")
    stop()
    return 0 if worst <= tolerance and swapped == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
