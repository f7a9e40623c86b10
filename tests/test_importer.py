"""`archc.import_module(module, example_inputs)` (archc/importer.py, issue #19's first step): a
PyTorch module becomes spec text whose parameter names are its state_dict keys.

Each test compiles the returned text itself (independently of the importer's own check), loads
the module's state_dict with strict=True and compares outputs with torch.testing.assert_close;
what cannot be imported yet is a clear ArchError naming the module and why.
"""

from __future__ import annotations

from typing import Any

import pytest

import archc
from archc.errors import ArchError

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Any) -> Any:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class PreNormNet(nn.Module):
    """Two pre-norm residual MLP blocks (the same class twice, once with another width) and a head."""

    def __init__(self, hidden2: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(16)
        self.mlp1 = Mlp(16, 32)
        self.norm2 = nn.LayerNorm(16, eps=1e-6)
        self.mlp2 = Mlp(16, hidden2)
        self.head = nn.Linear(16, 4, bias=False)

    def forward(self, x: Any) -> Any:
        x = x + self.mlp1(self.norm1(x))
        x = x + self.mlp2(self.norm2(x))
        return self.head(F.relu(x))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.down = nn.Conv2d(8, 8, (3, 1), stride=2, groups=2)
        self.fc = nn.Linear(8 * 3 * 4, 10)

    def forward(self, x: Any) -> Any:
        y = self.act(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.down(y * y), 1))


def _randomized(module: Any, seed: int = 0) -> Any:
    """Random values in every parameter and BatchNorm statistic (not the inits' ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


def _check_round_trip(module: Any, text: str, x: Any) -> None:
    from archc.api import build
    from archc.elaborate import elaborate_text

    built = build(elaborate_text(text, "imported.arch")).eval()
    built.load_state_dict(module.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(built(x), module(x), rtol=1e-5, atol=1e-5)
        other = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(7))  # another batch size
        torch.testing.assert_close(built(other), module(other), rtol=1e-5, atol=1e-5)


def test_import_residual_mlp_blocks() -> None:
    module = _randomized(PreNormNet())
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert text.count("block Mlp ") == 1  # two identical children: one block
    assert "    return x >> fc1 >> act >> fc2 >> drop\n" in text
    assert "    norm2 = layernorm(eps=1e-06)\n" in text and "    head = linear(4, bias=false)\n" in text
    assert module.training is False


def test_import_distinct_bodies_get_distinct_blocks() -> None:
    module = _randomized(PreNormNet(hidden2=24))
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "block Mlp " in text and "block Mlp2 " in text and "mlp2 = Mlp2()" in text


def test_import_conv_batchnorm_flatten() -> None:
    module = _randomized(ConvNet())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "model ConvNet (x: [B, 3, 8, 8]) -> [B, 10]" in text
    assert "conv = conv2d(8, 3, padding=1, bias=false)" in text
    assert "down = conv2d(8, [3, 1], stride=2, groups=2)" in text
    assert "    act_2 = x >> conv >> bn >> act\n" in text  # used twice: named after the instance that made it
    assert "    return act_2 * act_2 >> down >> flatten() >> fc\n" in text


def test_imported_text_is_canonically_formatted() -> None:
    from archc.frontend.fmt import format_module
    from archc.frontend.parser import parse

    text = archc.import_module(_randomized(PreNormNet()), torch.randn(2, 16))
    assert format_module(parse(text, "imported.arch")) == text


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Any) -> Any:
        return torch.cat([self.fc(x), x], dim=-1)


def test_import_functions_between_modules() -> None:
    module = _randomized(_Cat())
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "    return concat(x >> fc, x, dim=1)\n" in text


def test_a_module_that_is_a_sequential() -> None:
    """Keys `0.weight`: the instance is named by @scope."""
    module = _randomized(nn.Sequential(nn.Linear(4, 4)))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert '    @scope("0")\n    layer_0 = linear(4)\n' in text


class _Branchy(nn.Module):
    def forward(self, x: Any) -> Any:
        return x if x.sum() > 0 else -x


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x: Any) -> Any:
        return self.rnn(x)[0]


class _Hostile(nn.Module):
    """A child whose name is no spec name (it would be a state_dict key)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module('fc"}\nmodel X', nn.Linear(4, 4))

    def forward(self, x: Any) -> Any:
        return getattr(self, 'fc"}\nmodel X')(x)


class _Scratch(nn.Module):
    """A buffer that is not persistent: not in the state_dict, so no spec can load it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(4), persistent=False)

    def forward(self, x: Any) -> Any:
        return x * self.scale


@pytest.mark.parametrize(("module", "message"), [
    (_Branchy(), "torch.export cannot capture its forward: GuardOnDataDependentSymNode"),
    (_Lstm(), "in 'rnn' (LSTM): the op aten."),
    (_Hostile(), "is not a name a spec can give"),
    (_Scratch(), "the buffer 'scale' is not persistent"),
    (ConvNet(), "its forward fails on the example inputs"),  # a 2-D input to a conv
])
def test_what_cannot_be_imported_is_a_clear_error(module: Any, message: str) -> None:
    with pytest.raises(ArchError) as err:
        archc.import_module(module, torch.randn(2, 4))
    assert err.value.message.startswith(f"cannot import {type(module).__name__}: ")
    assert message in err.value.message
    assert "Traceback" not in err.value.message


def test_a_wrong_translation_is_caught_before_text_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The importer checks its own output: with relu mistranslated as silu (on both paths, torch.export's
    and fx's), nothing is returned."""
    from archc import importer, importer_aten

    table = importer._leaf_ops()
    monkeypatch.setattr(importer, "_leaf_ops", lambda: {**table, nn.ReLU: lambda m: "silu()"})
    monkeypatch.setitem(importer_aten.UNARY_OPS, "relu_", "silu")
    monkeypatch.setitem(importer_aten.UNARY_OPS, "relu", "silu")
    with pytest.raises(ArchError, match="the imported spec does not compute what ConvNet computes"):
        archc.import_module(_randomized(ConvNet()), torch.randn(2, 3, 8, 8))


class Tower(nn.Module):
    """A GPT-2-like tower: identical blocks in an nn.Sequential, then a mixed Sequential head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Mlp(16, 24) for _ in range(3)])
        self.head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: Any) -> Any:
        return self.head(self.blocks(x))


def test_import_sequential_children_as_stacks() -> None:
    module = _randomized(Tower())
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "    blocks = stack(3) { Mlp() }\n" in text and text.count("block Mlp ") == 1
    assert ("    head = stack(4) { i => if i == 0 then layernorm() else if i == 1 then linear(32) "
            "else if i == 2 then relu() else linear(4) }\n") in text


class _Loop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x


def test_module_list_loop_is_a_stack() -> None:
    module = _randomized(_Loop())
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "    layers = stack(2) { linear(4) }\n    return x >> layers\n" in text


MODULE_FILE = '''
import torch.nn as nn


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))
'''


def test_archc_import_command(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main
    from archc.commands.import_ import load_class

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymod.py").write_text(MODULE_FILE)
    assert main(["import", "mymod.py:Mlp", "--example-input", "2,16", "-o", "mlp.arch"]) == 0
    assert "wrote mlp.arch" in capsys.readouterr().out
    text = (tmp_path / "mlp.arch").read_text()
    assert text.startswith("# Imported from mymod.py:Mlp by archc.import_module.\n")
    assert "    return x + (x >> fc1 >> act >> fc2)\n" in text
    module = _randomized(load_class(str(tmp_path / "mymod.py:Mlp"))())
    _check_round_trip(module, text, torch.randn(3, 16, generator=torch.Generator().manual_seed(2)))
    assert main(["import", "mymod.py:Mlp", "--example-input", "2,16"]) == 0  # to stdout
    assert capsys.readouterr().out == text


@pytest.mark.parametrize(("argv", "message"), [
    (["mymod.py:Mpl", "--example-input", "2,16"], "mymod.py has no 'Mpl'\n  hint: did you mean 'Mlp'?"),
    (["mymod.py:Mlp", "--example-input", "2,x"], "--example-input takes a shape such as 2,16"),
    (["mymod.py:Mlp", "--example-input", "u8:2,16"], "--example-input takes a shape such as 2,16"),
    (["mymod.py:Mlp", "--example-input", "2,3,4"], "its forward fails on the example inputs: RuntimeError"),
    (["missing.py:Mlp", "--example-input", "2,16"], "no such Python file: missing.py"),
    (["mymod.py:Mlp", "--example-input", "2,16", "-o", "mymod.py"], "writing would overwrite it"),
])
def test_archc_import_errors(tmp_path, monkeypatch, capsys, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymod.py").write_text(MODULE_FILE)
    assert main(["import", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "mymod.py").read_text() == MODULE_FILE


def test_the_example_in_docs_is_what_the_importer_gives() -> None:
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "zoo.md").read_text()
    section = page[page.index("## Importing a PyTorch module"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    want = re.search(r"```arch\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    namespace: dict[str, Any] = {}
    exec(compile(code, "zoo.md", "exec"), namespace)
    torch.manual_seed(0)
    module = _randomized(namespace["Net"]())
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x, source="Net")
    assert text == want
    _check_round_trip(module, text, x)


class _Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from collections import OrderedDict

        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), act=nn.ReLU()))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(torch.flatten(self.gap(self.avg(self.pool(self.stem(x)))), 1))


def test_import_pools_and_a_named_sequential() -> None:
    module = _randomized(_Pools())
    x = torch.randn(2, 3, 11, 11, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "block Sequential (x: [B, C, H, W]) -> [B, Co, Ho, Wo]" in text and "stem = Sequential()" in text
    assert "pool = maxpool2d(3, stride=2, padding=1)" in text
    assert "avg = avgpool2d(2, ceil_mode=true, count_include_pad=false)" in text
    assert "gap = adaptive_avgpool2d(1)" in text


def test_import_timm_resnet18(timm: Any) -> None:
    """timm's ResNet-18 (random weights, BatchNorm statistics randomized) round-trips: its basic
    blocks become blocks, its downsample Sequentials stacks, its pooling the pool ops."""
    torch.manual_seed(0)
    module = _randomized(timm.create_model("resnet18", pretrained=False, num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "model ResNet (x: [B, 3, 32, 32]) -> [B, 10]" in text
    assert "layer1 = stack(2) { BasicBlock() }" in text


DATACLASS_FILE = '''
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class Config:
    width: int = 16


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(Config().width, 4)

    def forward(self, x):
        return self.fc(x)
'''


def test_archc_import_a_file_with_a_dataclass(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The user's file is in sys.modules while it runs (a dataclass looks its module up there)."""
    from archc.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "withcfg.py").write_text(DATACLASS_FILE)
    assert main(["import", "withcfg.py:Net", "--example-input", "2,16"]) == 0
    assert "fc = linear(4)" in capsys.readouterr().out


TOKENS_FILE = '''
import torch.nn as nn


class Lm(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens):
        return self.head(self.wte(tokens))
'''


def test_archc_import_token_ids(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`--example-input i64:2,5`: an integer input (token ids) types the model's input i64."""
    from archc.cli import main
    from archc.commands.import_ import load_class

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lm.py").write_text(TOKENS_FILE)
    assert main(["import", "lm.py:Lm", "--example-input", "i64:2,5"]) == 0
    text = capsys.readouterr().out
    assert "model Lm (x: i64[B, 5]) -> [B, 5, 10]" in text and "wte = embedding(10, 8)" in text
    module = _randomized(load_class(str(tmp_path / "lm.py:Lm"))())
    from archc.api import build
    from archc.elaborate import elaborate_text

    built = build(elaborate_text(text, "lm.arch")).eval()
    built.load_state_dict(module.state_dict(), strict=True)
    tokens = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(built(tokens), module(tokens), rtol=1e-5, atol=1e-5)


def test_hostile_class_names_are_not_spec_names() -> None:
    """Class names become block names only when they are plain ASCII names that no op or keyword has."""
    inner = type("relu", (nn.Module,), {"__init__": lambda self: (nn.Module.__init__(self), setattr(self, "fc", nn.Linear(4, 4)))[0],
                                         "forward": lambda self, x: self.fc(x) * 2.0})
    outer = type("Ünïcode", (nn.Module,), {"__init__": lambda self: (nn.Module.__init__(self), setattr(self, "body", inner()))[0],
                                            "forward": lambda self, x: self.body(x) + 1.0})
    module = _randomized(outer())
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    _check_round_trip(module, text, x)
    assert "block Block (x: [B, D]) -> [B, D]" in text and "model Imported (x: [B, 4])" in text


@pytest.mark.parametrize("qualname", ["M\naxis EVIL\n#", "M\u2028axis EVIL", "M\raxis EVIL"])
def test_a_class_name_with_a_new_line_stays_in_the_header_comment(qualname: str) -> None:
    """The header names the imported class; a name that would end the comment is written escaped
    (a class's __qualname__ may be any string)."""
    cls = type("M", (nn.Module,), {"__init__": lambda self: (nn.Module.__init__(self), setattr(self, "fc", nn.Linear(4, 4)))[0],
                                   "forward": lambda self, x: self.fc(x)})
    cls.__qualname__ = qualname
    module = _randomized(cls())
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    text = archc.import_module(module, x)
    assert "EVIL" not in "".join(line for line in text.splitlines() if not line.startswith("#"))
    assert text.splitlines()[0].startswith("# Imported from \"") and "\\u{" in text.splitlines()[0]
    _check_round_trip(module, text, x)
