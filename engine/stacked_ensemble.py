"""Deep ensembles (Lakshminarayanan et al. 2017) trained together: N networks of one architecture run as one
stacked network, so that one step trains every member and a small network keeps the device busy.

    ensemble = StackedEnsemble(members)                 # parameters and buffers stacked to (N, ...)
    logits = ensemble(x)                                # x (N, B, C, H, W): member k sees x[k] -> (N, B, K)
    optimizer = make_optimizer(ensemble.parameters(), "sgd", lr=0.1)
    stats = train_one_epoch_stacked(ensemble, ZippedLoader(loaders), optimizer, settings)  # one per member

Why this is exact. Member k's parameters and buffers are the k-th slices of tensors of shape `(N, ...)`
(`torch.func.stack_module_state`), and `torch.func.vmap` over `functional_call` runs every member on its
own batch: nothing is shared between members, BatchNorm normalises with each member's own batch
statistics and updates each member's own running statistics. The objective is the sum of the members'
losses, so the gradient of member k's slice is the gradient of member k's loss alone. SGD (momentum,
weight decay, Nesterov) and Adam are elementwise, so one optimiser over the stacked tensors updates each
slice exactly as N optimisers would update N networks. The numbers agree with members trained alone up to
the order of floating-point sums: vmap runs N convolutions as one grouped convolution and N linear layers
as one batched matrix product, whose kernels may add in another order (`tests/engine/test_ensemble.py` bounds
the difference).

Where it pays: on a GPU, which N small networks trained one after another leave mostly idle (`choose_mode`
stacks there by default). On the CPU the members keep the cores busy either way, and the grouped
convolutions vmap produces run slower than N plain ones, so the default there is one after another.

What cannot be stacked (`stacking_obstacle`): spectral normalisation, whose power iteration refreshes
its buffers with `out=` writes and whose rescaling is a custom autograd function, neither of which vmap can
batch; dropout (Wide-ResNet's default 0.3), whose masks a member alone draws from the global random
stream; `torch.compile`d and multi-process (DDP) training. Such members are trained one after another.

The stacked ensemble is stored as N ordinary checkpoints: `member_state_dict(k)` and
`member_optimizer_state` give member k's slice in exactly the layout a single network and its optimiser
have, so a member's files cannot be told from those of a network trained alone, and `stack_optimizer_states`
goes the other way when a run resumes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

import net
from engine import training
from engine.training import EpochStats, TrainSettings
from utils.device import autocast_context

MODES = ("auto", "stacked", "sequential")


def stacking_obstacle(model: nn.Module, *, compile: bool = False, world_size: int = 1) -> str | None:
    """Why members like `model` cannot be trained stacked (a phrase), or None when they can."""
    if compile:
        return "--compile traces one network, not a vmapped stack of them"
    if world_size > 1:
        return "several processes (torchrun) already share the work"
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return (
                "dropout draws its masks from the global random stream, which a stack cannot reproduce "
                "member by member"
            )
        if isinstance(module, (net.SpectralNormConv2d, net.SpectralNormLinear)):
            return (
                "spectral normalisation refreshes its power-iteration buffers in place, which torch.func.vmap "
                "cannot batch"
            )
    return None


def choose_mode(mode: str, obstacle: str | None, device_type: str) -> tuple[str, str]:
    """(`stacked` or `sequential`, why) for the requested `mode` (one of `MODES`), the network's obstacle
    (`stacking_obstacle`) and the device.

    `auto` stacks on a GPU, where members of a small network trained one after another leave it mostly
    idle, whenever stacking is exact. On the CPU the device is busy either way and stacking measured slower
    (vmap turns each convolution into a grouped one, which the CPU kernels run less efficiently:
    `benchmarks/ensemble_modes.py`), so `auto` trains one member after another there. Asking for `stacked`
    where it is not exact is a `ValueError` carrying the reason.
    """
    if mode not in MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; choose one of: {', '.join(MODES)}")
    if mode == "sequential":
        return "sequential", "asked for"
    if obstacle is not None:
        if mode == "stacked":
            raise ValueError(f"members cannot be trained stacked: {obstacle}")
        return "sequential", obstacle
    if mode == "stacked":
        return "stacked", "asked for"
    if device_type == "cuda":
        return "stacked", "exact for this network, and it keeps the GPU busy"
    return (
        "sequential",
        "on the CPU, where stacking is exact but measured slower: benchmarks/ensemble_modes.py",
    )


def _key(name: str) -> str:
    """A parameter name of the member network as an attribute name of the stack (no dots allowed)."""
    return name.replace(".", "__")


class StackedEnsemble(nn.Module):
    """N networks of one architecture as stacked parameters and buffers `(N, ...)`, run with one vmap.

    `forward(x)` takes `x (N, B, ...)` (member k's batch is `x[k]`) and returns `(N, B, K)`;
    `forward(x, shared_input=True)` runs every member on the same `x (B, ...)`. The members' own modules
    are not kept: the stack owns copies of their tensors, and `member_state_dict(k)` reads member k back.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.num_members = len(members)
        # A shape-only copy that functional_call runs with the stacked tensors. Kept out of the module tree
        # (its meta tensors are placeholders that .to() and state_dict() must not see).
        self.__dict__["template"] = copy.deepcopy(members[0]).to("meta")
        self.state_names = list(members[0].state_dict().keys())
        params, buffers = stack_module_state(list(members))
        self.param_names, self.buffer_names = list(params), list(buffers)
        for name, value in params.items():
            self.register_parameter(_key(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_key(name), value.clone())

    def train(self, mode: bool = True) -> StackedEnsemble:
        super().train(mode)
        self.template.train(mode)
        return self

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        template = self.template

        def one_member(params, buffers, inputs):
            return functional_call(template, (params, buffers), (inputs,))

        params = {name: getattr(self, _key(name)) for name in self.param_names}
        buffers = {name: getattr(self, _key(name)) for name in self.buffer_names}
        # randomness="error": a random operation would draw other numbers than the member alone does.
        return vmap(one_member, in_dims=(0, 0, None if shared_input else 0))(params, buffers, x)

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's state dict in the member network's own key order (views of the stacked tensors)."""
        return {name: getattr(self, _key(name))[k].detach() for name in self.state_names}


# --------------------------------------------------------------------------------------------------------
# Optimiser state: one stacked optimiser <-> N members' optimisers


def stack_optimizer_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The state dict of one optimiser over the stacked parameters, from the members' optimiser state dicts
    (same optimiser, same hyper-parameters, same steps taken). Per-parameter tensors (momentum buffers,
    Adam's moments) are stacked; the step count, shared by all, is kept once."""
    first = states[0]
    stacked: dict[int, dict[str, Any]] = {}
    for index, entry in first["state"].items():
        stacked[index] = {}
        for key, value in entry.items():
            per_member = [s["state"][index][key] for s in states]
            if key == "step" or not isinstance(value, torch.Tensor):
                stacked[index][key] = value
            else:
                stacked[index][key] = torch.stack(per_member)
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def member_optimizer_state(state: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Member k's slice of a stacked optimiser's state dict: what its own optimiser would hold."""
    out: dict[int, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        out[index] = {
            key: value[k] if isinstance(value, torch.Tensor) and key != "step" else value
            for key, value in entry.items()
        }
    return {"state": out, "param_groups": state["param_groups"]}


class MemberView:
    """Member k of a stacked ensemble and its optimiser, seen as one network's `model` and `optimizer` by
    code that only calls `state_dict()` (e.g. `engine.training_run.EpochCheckpointer`)."""

    def __init__(self, ensemble: StackedEnsemble, optimizer: torch.optim.Optimizer, k: int) -> None:
        self.ensemble, self._optimizer, self.k = ensemble, optimizer, k
        self.model = _StateOf(lambda: ensemble.member_state_dict(k))
        self.optimizer = _StateOf(lambda: member_optimizer_state(optimizer.state_dict(), k))


class _StateOf:
    def __init__(self, read: Callable[[], dict]) -> None:
        self._read = read

    def state_dict(self) -> dict:
        return self._read()


# --------------------------------------------------------------------------------------------------------
# Loaders and the loop


class ZippedLoader:
    """The members' own loaders stepped together: yields `x (N, B, ...)`, `y (N, B)`, member k's batch from
    loader k. The loaders must give batches of equal sizes (splits of one size, one batch size)."""

    def __init__(self, loaders: Sequence[Iterable]) -> None:
        self.loaders = list(loaders)
        lengths = {len(loader) for loader in self.loaders if hasattr(loader, "__len__")}
        if len(lengths) > 1:
            raise ValueError(f"the members' loaders have different lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.loaders[0])

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)

    def __iter__(self):
        for batches in zip(*self.loaders, strict=True):
            xs, ys = zip(*batches)
            yield torch.stack(xs), torch.stack(ys)


def stacked_step(
    ensemble: StackedEnsemble, optimizer: torch.optim.Optimizer, settings: TrainSettings
) -> training.Step:
    """`engine.training.network_step` for every member at once: member k's loss on its own batch `x[k]`
    as the step computes it for one network (`loss_fn(logits.float(), y)`, vmapped), and one backward pass
    of their sum (see the module docstring). `x (N, B, ...)`, `y (N, B)` (or `(B,)`, shared)."""
    loss_fn = training.LOSSES[settings.loss_function]

    def step(x: torch.Tensor, y: torch.Tensor):
        x = x.to(settings.device, non_blocking=True)
        y = y.to(settings.device, non_blocking=True)
        with autocast_context(settings.device, settings.precision):
            logits = ensemble(x)
        if y.dim() == 1:
            y = y.expand(ensemble.num_members, -1)
        losses = vmap(lambda z, t: loss_fn(z.float(), t))(logits, y)
        batch = y.shape[1]
        objectives = losses / (batch * settings.world_size) if settings.loss_mean else losses
        optimizer.zero_grad(set_to_none=True)
        objectives.sum().backward()
        optimizer.step()
        hits = (logits.detach().argmax(dim=2) == y).sum(1)
        return objectives.detach(), losses.detach(), hits, batch

    return step


def train_one_epoch_stacked(
    ensemble: StackedEnsemble,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    *,
    epoch: int = 0,
    member_names: Sequence[str] | None = None,
    desc: str | None = None,
) -> list[EpochStats]:
    """One pass of every member over its own batches (`loader` yields `x (N, B, ...)`, `y (N, B)`):
    `engine.training.run_epoch` with `stacked_step`; one `EpochStats` per member. A non-finite loss of any
    member raises `NonFiniteLossError` naming it (`member_names`, default "member k")."""
    n = ensemble.num_members
    ensemble.train()
    return training.run_epoch(
        loader,
        stacked_step(ensemble, optimizer, settings),
        settings,
        epoch=epoch,
        lr=float(optimizer.param_groups[0]["lr"]),
        names=list(member_names or [f"member {k + 1}" for k in range(n)]),
        desc=desc or f"epoch {epoch + 1} ({n} members)",
    )


@torch.no_grad()
def evaluate_accuracy_stacked(
    ensemble: StackedEnsemble,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: TrainSettings,
    *,
    shared_input: bool = False,
) -> list[float]:
    """Top-1 accuracy of every member (eval mode): over its own batches (`x (N, B, ...)`), or with
    `shared_input` over one loader's `x (B, ...)`, `y (B,)` seen by all members."""
    was_training = ensemble.training
    ensemble.eval()
    correct = torch.zeros(ensemble.num_members, dtype=torch.float64, device=settings.device)
    total = 0
    for x, y in loader:
        x = x.to(settings.device, non_blocking=True)
        y = y.to(settings.device, non_blocking=True)
        with autocast_context(settings.device, settings.precision):
            logits = ensemble(x, shared_input=shared_input)
        correct += (logits.argmax(dim=2) == y).sum(-1)
        total += y.shape[-1]
    ensemble.train(was_training)
    return (correct / total).tolist() if total else [float("nan")] * ensemble.num_members


__all__ = [
    "MODES",
    "MemberView",
    "StackedEnsemble",
    "ZippedLoader",
    "choose_mode",
    "evaluate_accuracy_stacked",
    "member_optimizer_state",
    "stack_optimizer_states",
    "stacked_step",
    "stacking_obstacle",
    "train_one_epoch_stacked",
]
