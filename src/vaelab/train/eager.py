"""The eager executor: one model, its ``TrainStep`` run as written (or compiled), and fused Adam."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vaelab.checkpoint import TrainState
from vaelab.config import TrainConfig
from vaelab.distributions import NoiseTape
from vaelab.errors import VaelabError
from vaelab.models import LatentModel
from vaelab.objectives import ObjectiveOutput
from vaelab.train.members import Member
from vaelab.train.step import StepContext, TrainStep


def fused_adam(model: torch.nn.Module) -> bool:
    """Whether Adam can run fused for this model (float32 / float64 parameters on CPU or CUDA).

    The fused kernel updates every parameter in one pass instead of ~10 elementwise ops per
    tensor: on CPU it makes a 784-400-20 MNIST epoch ~25 % faster (benchmarks/bench_mnist_speed.py).
    """
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
               for p in model.parameters())


def total_norm(grads: list[Tensor]) -> Tensor:
    """‖g‖₂ over all gradients: the norm of their per-tensor norms (``get_total_norm``'s float).

    For tensors of one device and dtype (the caller checks; ``EagerExecutor`` does) the same calls as
    ``torch.nn.utils.get_total_norm`` (``_foreach_norm``, then the norm of the stacked norms),
    without its grouping of the tensors by device and dtype, which costs as much as the norms
    themselves at 2-D sizes.
    """
    if not grads or grads[0].device.type not in ("cpu", "cuda") or grads[0].is_sparse:
        return torch.nn.utils.get_total_norm(grads)
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def make_adam(model: LatentModel, config: TrainConfig) -> torch.optim.Adam:
    """The run's optimizer: torch's Adam with the config's lr, β1, β2 and ε, fused where it can be."""
    beta1, beta2 = config.adam_betas
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(beta1, beta2), eps=config.adam_eps,
                            fused=fused_adam(model) or None)


class CompileError(VaelabError):
    """``train.compile``: torch.compile could not compile the training step."""


class EagerExecutor:
    """One model trained by its ``TrainStep``: forward, backward, gradient norm, clip, Adam.

    With ``config.compile`` the step runs through ``compiled_step`` (same draws, weights equal
    up to float rounding). ``step_module`` may be a wrapper of the TrainStep that calls it
    (``DistributedDataParallel``): it is what runs the forward pass.
    """

    def __init__(self, model: LatentModel, config: TrainConfig, state: TrainState, c: Tensor | None = None,
                 step_module: torch.nn.Module | None = None, train_step: TrainStep | None = None) -> None:
        self.model, self.config, self.c = model, config, c  # c: the training conditions (N, C)
        self.train_step = train_step if train_step is not None else TrainStep(model, config)
        module = step_module if step_module is not None else self.train_step
        self.run: Callable[[Tensor, Tensor | None, StepContext], ObjectiveOutput] = (
            compiled_step(module) if config.compile else module)
        self.optimizer = make_adam(model, config)
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # One device and dtype (the usual case): the gradient norm skips get_total_norm's grouping.
        one_group = len({(p.device, p.dtype) for p in self.params}) == 1
        self.norm = total_norm if one_group else torch.nn.utils.get_total_norm
        self.term_names = ["recon", "kl"]
        self.grad_norm = torch.zeros(())

    def batch(self, members: Sequence[Member], b: int) -> tuple[Tensor, Tensor | None]:
        (m,) = members
        bs = m.config.batch_size
        assert m.perm is not None and m.x_epoch is not None
        idx = m.perm[b * bs:(b + 1) * bs]
        # index_select copies whole rows: the same values as x[idx], ~2x faster for 784-pixel rows
        return m.x_epoch.index_select(0, idx), (None if self.c is None else self.c.index_select(0, idx))

    def forward_backward(self, members: Sequence[Member], xb: Tensor, cb: Tensor | None,
                         contexts: Sequence[StepContext]) -> list[list[float]]:
        out = self.run(xb, cb, contexts[0])
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.grad_norm = grad_norm = self.norm([p.grad for p in self.params if p.grad is not None])
        self.term_names = list(out.terms)
        with torch.no_grad():  # one kernel and one host read for the loss, every term and the norm
            return [torch.stack([out.loss, *out.terms.values(), grad_norm.to(out.loss.dtype)]).tolist()]

    def update(self, members: Sequence[Member]) -> None:
        if not members:
            return
        (m,) = members
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.config.grad_clip, self.grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = m.lr
        self.optimizer.step()

    def discard(self, member: Member) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self, member: Member) -> None:
        """The model is trained in place: nothing to copy."""

    def optimizer_state(self, member: Member) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def state_extras(self, member: Member) -> dict[str, Any]:
        """Nothing beyond the loop's state: the member's one generator drew everything."""
        return {}


def compiled_step(step: Callable[..., ObjectiveOutput]) -> Callable[[Tensor, Tensor | None, StepContext],
                                                                     ObjectiveOutput]:
    """``step`` (a TrainStep) compiled with ``torch.compile`` (inductor), forward and backward.

    torch.compile cannot trace a ``torch.Generator``, so the first batch of each shape runs
    eagerly and records the shapes of its N(0, I) draws (``distributions.NoiseTape``); later
    batches draw those from the context's generator outside the compiled graph, in the same
    order, and pass them in. The draws, and so the generator state a checkpoint saves, are the
    eager path's; the weights differ from eager only by float rounding (tests/test_train_speed.py).
    The scalars go in as 0-dim tensors, so a β schedule does not recompile the step.
    """
    plans: dict[tuple[tuple[int, ...], tuple[int, ...] | None], tuple[list[tuple[tuple[int, ...], torch.dtype]],
                                                                     list[str]]] = {}

    def traced(x: Tensor, c: Tensor | None, scalars: dict[str, Tensor], noise: list[Tensor]) -> tuple[Tensor,
                                                                                                        list[Tensor]]:
        out = step(x, c, StepContext(0, 0, scalars, NoiseTape(noise)))
        return out.loss, list(out.terms.values())

    compiled = torch.compile(traced, fullgraph=True, dynamic=False)

    def run(x: Tensor, c: Tensor | None, ctx: StepContext) -> ObjectiveOutput:
        generator = ctx.noise
        assert isinstance(generator, torch.Generator)
        key = (tuple(x.shape), None if c is None else tuple(c.shape))
        plan = plans.get(key)
        if plan is None:  # the first batch of this shape: eager, noting the draws it makes
            tape = NoiseTape(record=generator)
            out = step(x, c, StepContext(ctx.step, ctx.epoch, ctx.scalars, tape))
            plans[key] = (tape.shapes, list(out.terms))
            return out
        shapes, names = plan
        noise = [torch.randn(shape, generator=generator, device=x.device, dtype=dtype) for shape, dtype in shapes]
        scalars = {name: torch.tensor(value, dtype=x.dtype, device=x.device) for name, value in ctx.scalars.items()}
        try:
            loss, terms = compiled(x, c, scalars, noise)
        except Exception as err:  # torch's compiler errors share no base class; none is swallowed
            raise CompileError(f"train.compile: torch.compile could not compile the training step "
                               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                               "train without it (train.compile = false, drop --compile)") from err
        return ObjectiveOutput(loss=loss, terms=dict(zip(names, terms, strict=True)))

    return run


__all__ = ["CompileError", "EagerExecutor", "compiled_step", "fused_adam", "total_norm"]
