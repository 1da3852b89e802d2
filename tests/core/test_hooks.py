"""mmeff.hooks: named, ordered, removable, stateful hooks, and coexistence with accelerate/diffusers hooks."""

from __future__ import annotations

import inspect

import accelerate.hooks
import diffusers.hooks
import pytest
import torch
import torch.nn as nn

from mmeff import hooks as mh


def _make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)).eval()


@pytest.fixture
def model() -> nn.Sequential:
    return _make_model()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(1))


def _assert_pristine(module: nn.Module) -> None:
    """The module carries no instance forward and no mmeff registry: the class forward is used."""
    assert "forward" not in module.__dict__
    assert mh._ATTR not in module.__dict__
    assert module.forward.__func__ is type(module).forward


class Recorder(mh.ModelHook):
    """Logs ``pre:<tag>`` / ``post:<tag>`` into a shared list."""

    def __init__(self, tag: str, log: list[str]) -> None:
        self.tag = tag
        self.log = log

    def pre_forward(self, module, args, kwargs):
        self.log.append(f"pre:{self.tag}")
        return args, kwargs

    def post_forward(self, module, output):
        self.log.append(f"post:{self.tag}")
        return output


class AddOutput(mh.ModelHook):
    def __init__(self, value: float) -> None:
        self.value = value

    def post_forward(self, module, output):
        return output + self.value


class ScaleInput(mh.ModelHook):
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def pre_forward(self, module, args, kwargs):
        return (args[0] * self.factor, *args[1:]), kwargs


class Stateful(mh.ModelHook):
    stateful = True

    def __init__(self) -> None:
        self.resets = 0

    def reset_state(self, module) -> None:
        self.resets += 1


class NotStateful(mh.ModelHook):
    def __init__(self) -> None:
        self.resets = 0

    def reset_state(self, module) -> None:  # must not be called: stateful is False
        self.resets += 1


# -- ordering and removal ---------------------------------------------------------------------
def test_pre_in_registration_order_post_in_reverse(model, x):
    log: list[str] = []
    layer = model[0]
    for tag in "abc":
        mh.add_hook(layer, tag, Recorder(tag, log))
    model(x)
    assert log == ["pre:a", "pre:b", "pre:c", "post:c", "post:b", "post:a"]


def test_hooks_compose_on_inputs_and_outputs(model, x):
    layer = model[2]
    h = torch.relu(model[0](x))
    base = layer(h)
    mh.add_hook(layer, "scale", ScaleInput(2.0))
    mh.add_hook(layer, "add", AddOutput(1.0))
    torch.testing.assert_close(layer(h), layer.__class__.forward(layer, 2.0 * h) + 1.0)
    assert not torch.equal(layer(h), base)


def test_removing_middle_hook_keeps_the_others(model, x):
    log: list[str] = []
    layer = model[0]
    for tag in "abc":
        mh.add_hook(layer, tag, Recorder(tag, log))
    mh.remove_hook(layer, "b")
    model(x)
    assert log == ["pre:a", "pre:c", "post:c", "post:a"]
    assert list(mh.HookRegistry.get(layer).hooks) == ["a", "c"]


def test_removing_last_hook_restores_original_forward_exactly(model, x):
    layer = model[0]
    base = model(x)
    assert "forward" not in layer.__dict__
    mh.add_hook(layer, "add", AddOutput(1.0))
    mh.add_hook(layer, "scale", ScaleInput(3.0))
    assert "forward" in layer.__dict__
    assert not torch.equal(model(x), base)
    mh.remove_hook(layer, "add")
    assert "forward" in layer.__dict__  # one hook left: still wrapped
    mh.remove_hook(layer, "scale")
    _assert_pristine(layer)
    assert torch.equal(model(x), base)


def test_restores_a_preexisting_instance_forward(model, x):
    layer = model[0]
    calls = []
    class_forward = type(layer).forward

    def custom_forward(inp):
        calls.append(1)
        return class_forward(layer, inp)

    layer.forward = custom_forward
    mh.add_hook(layer, "add", AddOutput(1.0))
    torch.testing.assert_close(layer(x), class_forward(layer, x) + 1.0)
    mh.remove_hook(layer, "add")
    assert layer.__dict__["forward"] is custom_forward
    assert mh._ATTR not in layer.__dict__
    layer(x)
    assert len(calls) == 2


def test_reattach_after_full_removal(model, x):
    layer = model[0]
    base = model(x)
    for _ in range(3):
        mh.add_hook(layer, "add", AddOutput(1.0))
        assert not torch.equal(model(x), base)
        mh.remove_hook(layer, "add")
        _assert_pristine(layer)
        assert torch.equal(model(x), base)


def test_duplicate_name_raises_value_error(model):
    layer = model[0]
    mh.add_hook(layer, "dup", AddOutput(1.0))
    with pytest.raises(ValueError, match="dup"):
        mh.add_hook(layer, "dup", AddOutput(2.0))
    # the first hook is untouched
    assert mh.HookRegistry.get(layer).hooks["dup"].value == 1.0
    # the same name on another module is fine
    mh.add_hook(model[2], "dup", AddOutput(2.0))


def test_remove_missing_hook_raises_key_error(model):
    with pytest.raises(KeyError):
        mh.remove_hook(model[0], "nope")
    mh.add_hook(model[0], "a", AddOutput(1.0))
    with pytest.raises(KeyError, match="nope"):
        mh.remove_hook(model[0], "nope")


def test_remove_all_only_removes_prefix(model, x):
    base = model(x)
    mh.add_hook(model, "p1/top", AddOutput(0.0))
    mh.add_hook(model[0], "p1/first", AddOutput(1.0))
    mh.add_hook(model[2], "p1/last", AddOutput(1.0))
    mh.add_hook(model[2], "p2/last", AddOutput(5.0))
    mh.add_hook(model[0], "p10/first", AddOutput(0.5))  # shares the string prefix "p1" but not "p1/"

    assert mh.remove_all(model, "p1/") == 3
    remaining = sorted(name for _, name, _ in mh.iter_hooks(model))
    assert remaining == ["p10/first", "p2/last"]
    _assert_pristine(model)

    assert mh.remove_all(model, "p2/") == 1
    _assert_pristine(model[2])
    assert mh.remove_all(model, "p10/") == 1
    assert mh.remove_all(model, "p10/") == 0
    for module in model.modules():
        _assert_pristine(module)
    assert torch.equal(model(x), base)


def test_remove_all_under_a_subtree_only(model):
    mh.add_hook(model[0], "p/a", AddOutput(1.0))
    mh.add_hook(model[2], "p/b", AddOutput(1.0))
    assert mh.remove_all(model[2], "p/") == 1
    assert [name for _, name, _ in mh.iter_hooks(model)] == ["p/a"]


def test_reset_stateful_hooks_calls_only_stateful(model):
    s1, s2, plain = Stateful(), Stateful(), NotStateful()
    mh.add_hook(model[0], "ns/s1", s1)
    mh.add_hook(model[2], "ns/s2", s2)
    mh.add_hook(model[2], "ns/plain", plain)
    other = Stateful()
    mh.add_hook(model[0], "other/s", other)

    mh.reset_stateful_hooks(model)
    assert (s1.resets, s2.resets, plain.resets, other.resets) == (1, 1, 0, 1)
    mh.reset_stateful_hooks(model, "ns/")
    assert (s1.resets, s2.resets, plain.resets, other.resets) == (2, 2, 0, 1)


def test_signature_unchanged_while_hooked(model):
    layer = model[0]
    before = inspect.signature(layer.forward)
    mh.add_hook(layer, "a", AddOutput(1.0))
    mh.add_hook(layer, "b", ScaleInput(1.0))
    assert inspect.signature(layer.forward) == before
    assert list(inspect.signature(layer.forward).parameters) == ["input"]
    mh.remove_hook(layer, "a")
    mh.remove_hook(layer, "b")
    assert inspect.signature(layer.forward) == before


def test_hooks_see_the_module_and_kwargs():
    seen = {}

    class Probe(mh.ModelHook):
        def pre_forward(self, module, args, kwargs):
            seen["module"] = module
            seen["kwargs"] = dict(kwargs)
            return args, kwargs

    class KwModule(nn.Module):
        def forward(self, x, *, bias=0.0):
            return x + bias

    m = KwModule()
    mh.add_hook(m, "probe", Probe())
    assert torch.equal(m(torch.zeros(2), bias=1.5), torch.full((2,), 1.5))
    assert seen["module"] is m and seen["kwargs"] == {"bias": 1.5}


# -- accelerate -------------------------------------------------------------------------------
class AccelerateAdd(accelerate.hooks.ModelHook):
    def __init__(self, value: float) -> None:
        self.value = value

    def post_forward(self, module, output):
        return output + self.value


def test_accelerate_below_mmeff_remove_mmeff_first(model, x):
    layer = model[0]
    base = layer(x)
    accelerate.hooks.add_hook_to_module(layer, AccelerateAdd(100.0))
    acc_forward = layer.forward
    mh.add_hook(layer, "ours", AddOutput(1.0))
    torch.testing.assert_close(layer(x), base + 101.0)

    mh.remove_hook(layer, "ours")
    assert layer.__dict__["forward"] is acc_forward  # accelerate's wrapper restored exactly
    assert mh._ATTR not in layer.__dict__
    torch.testing.assert_close(layer(x), base + 100.0)

    accelerate.hooks.remove_hook_from_module(layer)
    assert torch.equal(layer(x), base)
    assert layer.forward.__func__ is type(layer).forward


def test_accelerate_above_mmeff_remove_mmeff_first(model, x):
    layer = model[0]
    base = layer(x)
    mh.add_hook(layer, "ours", AddOutput(1.0))
    accelerate.hooks.add_hook_to_module(layer, AccelerateAdd(100.0))
    acc_forward = layer.forward
    torch.testing.assert_close(layer(x), base + 101.0)

    # removing ours must not clobber accelerate's wrapper
    mh.remove_hook(layer, "ours")
    assert layer.forward is acc_forward
    torch.testing.assert_close(layer(x), base + 100.0)

    # accelerate removed last: our pass-through may stay, but the state must be sane
    accelerate.hooks.remove_hook_from_module(layer)
    assert not hasattr(layer, "_hf_hook") and not hasattr(layer, "_old_forward")
    assert torch.equal(layer(x), base)
    assert inspect.signature(layer.forward) == inspect.signature(type(layer).forward.__get__(layer))

    # and mmeff still works on that module, and restores exactly afterwards
    mh.add_hook(layer, "again", AddOutput(2.0))
    torch.testing.assert_close(layer(x), base + 2.0)
    mh.remove_hook(layer, "again")
    _assert_pristine(layer)
    assert torch.equal(layer(x), base)


def test_accelerate_above_mmeff_remove_accelerate_first(model, x):
    layer = model[0]
    base = layer(x)
    mh.add_hook(layer, "ours", AddOutput(1.0))
    accelerate.hooks.add_hook_to_module(layer, AccelerateAdd(100.0))

    accelerate.hooks.remove_hook_from_module(layer)
    torch.testing.assert_close(layer(x), base + 1.0)
    mh.remove_hook(layer, "ours")
    _assert_pristine(layer)
    assert torch.equal(layer(x), base)


def test_accelerate_below_mmeff_remove_accelerate_first_then_mmeff_is_sane(model, x):
    """accelerate restores its saved forward, dropping our wrapper: afterwards nothing must crash and
    the module must compute its plain output."""
    layer = model[0]
    base = layer(x)
    accelerate.hooks.add_hook_to_module(layer, AccelerateAdd(100.0))
    mh.add_hook(layer, "ours", AddOutput(1.0))
    accelerate.hooks.remove_hook_from_module(layer)
    out = layer(x)
    # accelerate drops our wrapper (today: plain output); keeping our hook alive would also be fine
    assert torch.equal(out, base) or torch.allclose(out, base + 1.0)
    mh.remove_hook(layer, "ours")
    assert torch.equal(layer(x), base)
    assert layer.forward.__func__ is type(layer).forward


def test_mmeff_hook_runs_after_accelerate_clobbered_our_wrapper(model, x):
    layer = model[0]
    base = layer(x)
    accelerate.hooks.add_hook_to_module(layer, AccelerateAdd(100.0))
    mh.add_hook(layer, "ours", AddOutput(1.0))
    accelerate.hooks.remove_hook_from_module(layer)
    mh.remove_hook(layer, "ours")
    mh.add_hook(layer, "new", AddOutput(5.0))
    torch.testing.assert_close(layer(x), base + 5.0)


def test_accelerate_on_whole_model_with_mmeff_on_children(model, x):
    base = model(x)
    accelerate.hooks.add_hook_to_module(model, AccelerateAdd(100.0))
    mh.add_hook(model[2], "child", AddOutput(1.0))
    torch.testing.assert_close(model(x), base + 101.0)
    assert mh.remove_all(model, "child") == 1
    torch.testing.assert_close(model(x), base + 100.0)
    accelerate.hooks.remove_hook_from_module(model, recurse=True)
    assert torch.equal(model(x), base)
    _assert_pristine(model[2])


# -- diffusers --------------------------------------------------------------------------------
class DiffusersAdd(diffusers.hooks.ModelHook):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def post_forward(self, module, output):
        self.calls += 1
        return output + self.value


def _diffusers_registry(module: nn.Module) -> diffusers.hooks.HookRegistry:
    return diffusers.hooks.HookRegistry.check_if_exists_or_initialize(module)


def test_diffusers_below_mmeff_both_run_and_remove_in_lifo(model, x):
    layer = model[0]
    base = layer(x)
    dh = DiffusersAdd(100.0)
    _diffusers_registry(layer).register_hook(dh, "theirs")
    diff_forward = layer.forward
    mh.add_hook(layer, "ours", AddOutput(1.0))
    torch.testing.assert_close(layer(x), base + 101.0)
    assert dh.calls == 1

    mh.remove_hook(layer, "ours")
    assert layer.__dict__["forward"] is diff_forward
    assert mh._ATTR not in layer.__dict__
    torch.testing.assert_close(layer(x), base + 100.0)

    _diffusers_registry(layer).remove_hook("theirs")
    assert torch.equal(layer(x), base)
    assert dh.calls == 2


def test_diffusers_above_mmeff_remove_diffusers_first(model, x):
    layer = model[0]
    base = layer(x)
    mh.add_hook(layer, "ours", AddOutput(1.0))
    _diffusers_registry(layer).register_hook(DiffusersAdd(100.0), "theirs")
    torch.testing.assert_close(layer(x), base + 101.0)

    _diffusers_registry(layer).remove_hook("theirs")
    torch.testing.assert_close(layer(x), base + 1.0)
    mh.remove_hook(layer, "ours")
    _assert_pristine(layer)
    assert torch.equal(layer(x), base)


def test_diffusers_above_mmeff_remove_mmeff_first(model, x):
    layer = model[0]
    base = layer(x)
    mh.add_hook(layer, "ours", AddOutput(1.0))
    _diffusers_registry(layer).register_hook(DiffusersAdd(100.0), "theirs")
    diff_forward = layer.forward

    mh.remove_hook(layer, "ours")
    assert layer.forward is diff_forward  # not clobbered
    torch.testing.assert_close(layer(x), base + 100.0)

    _diffusers_registry(layer).remove_hook("theirs")
    assert torch.equal(layer(x), base)
    assert inspect.signature(layer.forward) == inspect.signature(type(layer).forward.__get__(layer))

    mh.add_hook(layer, "again", AddOutput(3.0))
    torch.testing.assert_close(layer(x), base + 3.0)
    mh.remove_hook(layer, "again")
    _assert_pristine(layer)
    assert torch.equal(layer(x), base)


def test_diffusers_and_mmeff_interleaved(model, x):
    layer = model[0]
    base = layer(x)
    reg = _diffusers_registry(layer)
    reg.register_hook(DiffusersAdd(100.0), "d1")
    mh.add_hook(layer, "m1", AddOutput(1.0))
    reg.register_hook(DiffusersAdd(10.0), "d2")
    mh.add_hook(layer, "m2", AddOutput(1000.0))
    torch.testing.assert_close(layer(x), base + 1111.0)

    # unwind in LIFO order; every intermediate state is correct
    mh.remove_hook(layer, "m2")
    torch.testing.assert_close(layer(x), base + 111.0)
    reg.remove_hook("d2")
    torch.testing.assert_close(layer(x), base + 101.0)
    mh.remove_hook(layer, "m1")
    torch.testing.assert_close(layer(x), base + 100.0)
    reg.remove_hook("d1")
    assert torch.equal(layer(x), base)


def test_mmeff_hook_runs_after_diffusers_clobbered_our_wrapper(model, x):
    layer = model[0]
    base = layer(x)
    _diffusers_registry(layer).register_hook(DiffusersAdd(100.0), "theirs")
    mh.add_hook(layer, "ours", AddOutput(1.0))
    _diffusers_registry(layer).remove_hook("theirs")
    mh.remove_hook(layer, "ours")
    mh.add_hook(layer, "new", AddOutput(5.0))
    torch.testing.assert_close(layer(x), base + 5.0)
