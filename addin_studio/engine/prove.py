"""Attach proves the forward pass: run the attached model once on the example input, and name the
placement that breaks it.

The proof runs on the ``meta`` device first (``torch.func.functional_call`` with meta copies of every
parameter and buffer: no memory, no arithmetic); a model that cannot run on ``meta`` (data-dependent
shapes, plain tensor attributes) is run for real in eval mode under ``torch.no_grad()`` — eval mode so
that BatchNorm statistics do not move. Nothing the proof does stays on the model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..inputs import call_model
from .hooks import PostHook, PreHook


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, tuple):
        return tuple(_to_meta(v) for v in value)
    if isinstance(value, list):
        return [_to_meta(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def _eval_no_grad(model: nn.Module, call: Callable[[], Any]) -> None:
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            call()
    finally:
        for m, flag in training.items():
            m.training = flag


def run_meta(model: nn.Module, example_input: Any, forward_kwargs: dict) -> None:
    """One forward pass with every tensor on ``meta`` (raises what the forward raises)."""
    metas: dict[int, torch.Tensor] = {}  # tied tensors stay one tensor
    state = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        if id(t) not in metas:
            metas[id(t)] = torch.empty_like(t, device="meta")
        state[n] = metas[id(t)]
    x, kw = _to_meta(example_input), _to_meta(forward_kwargs)

    def call() -> None:
        args: tuple = tuple(x) if isinstance(x, tuple) else (x,)
        if isinstance(x, dict):
            torch.func.functional_call(model, state, (), {**x, **kw}, strict=True)
        else:
            torch.func.functional_call(model, state, args, kw, strict=True)

    # functional_call swaps every name and swaps back in the same order: a module shared by several
    # parents (one tensor slot under two names) gets its meta copy back. Put every slot back ourselves.
    slots: list[tuple[dict[str, Any], str, Any]] = [
        (store, name, t)
        for m in model.modules()
        for store in (m._parameters, m._buffers)
        for name, t in store.items()
    ]
    try:
        _eval_no_grad(model, call)
    finally:
        for store, name, t in slots:
            if store.get(name) is not t:
                store[name] = t


def run_real(model: nn.Module, example_input: Any, forward_kwargs: dict) -> None:
    """One real forward pass in eval mode under no_grad (BatchNorm statistics stay as they were)."""
    _eval_no_grad(model, lambda: call_model(model, example_input, **forward_kwargs))


class Switch:
    """Enable only some add-ins' hook actions (and forward methods) for a while (to find the one that
    breaks a forward)."""

    def __init__(self, hooks: Sequence[PreHook | PostHook], forwards: Sequence[Any] = ()) -> None:
        self.hooks = list(hooks)
        self.saved = [list(h.actions) for h in self.hooks]
        self.forwards = list(forwards)

    def only(self, addins: set[int]) -> None:
        """Keep the actions whose add-in's ``id`` is in ``addins`` (and any action of no add-in)."""
        for hook, actions in zip(self.hooks, self.saved):
            hook.actions[:] = [
                a for a in actions if getattr(a, "addin", None) is None or id(a.addin) in addins
            ]
        for action in self.forwards:
            action.enabled = id(action.addin) in addins

    def restore(self) -> None:
        for hook, actions in zip(self.hooks, self.saved):
            hook.actions[:] = actions
        for action in self.forwards:
            action.enabled = True


def first_failure(
    model: nn.Module,
    example_input: Any,
    forward_kwargs: dict,
    hooks: Sequence[PreHook | PostHook],
    addins: Sequence[Any],
    runner: Callable[[nn.Module, Any, dict], None],
    forwards: Sequence[Any] = (),
) -> tuple[int | None, BaseException | None]:
    """The index of the first add-in (in config order) whose hooks (or forward methods, ``forwards``)
    make the forward fail, and the error — found by bisecting over prefixes of ``addins`` (log2(n)
    forward passes)."""
    switch = Switch(hooks, forwards)

    def fails(n: int) -> BaseException | None:
        switch.only({id(a) for a in addins[:n]})
        try:
            runner(model, example_input, forward_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of the forward is the answer
            return exc
        finally:
            for a in addins:
                if hasattr(a, "inputs_cache"):
                    a.inputs_cache = None
        return None

    try:
        bare = fails(0)
        if bare is not None:
            return None, bare
        lo, hi = 0, len(addins)  # fails(lo) is None; fails(hi) is not
        error = fails(hi)
        if error is None:
            return None, None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            err = fails(mid)
            if err is None:
                lo = mid
            else:
                hi, error = mid, err
        return hi - 1, error
    finally:
        switch.restore()
