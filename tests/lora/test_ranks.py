"""The rank channel (``flexispeech.lora.ranks``): sub-batches with ``use_ranks(rows=...)``,
``adapter_off``, and ``flexispeech.lora`` as the only code that touches the rank slot."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from lora_models import TinyNet, randomize_adapters

from flexispeech import FlexiLoraConfig, inject, remove, use_ranks
from flexispeech.lora import RankError, adapter_off, current_ranks

PACKAGE = Path(__file__).resolve().parents[2] / "flexispeech"


def test_rows_run_a_sub_batch_at_the_ranks_in_force(tiny: TinyNet) -> None:
    x = torch.randn(4, 3, 6)
    ranks = [0, 1, 2, 4]
    with use_ranks(tiny, ranks) as outer:
        full = tiny(x)
        with use_ranks(tiny, rows=[3, 1]) as sub:
            assert sub.tolist() == [4, 1]
            picked = tiny(x[[3, 1]])
            expanded = tiny(x[[3, 1]].repeat_interleave(2, dim=0))  # beams of the sub-batch
        assert current_ranks(tiny) is outer  # the batch's ranks are back
        torch.testing.assert_close(tiny(x), full, rtol=0, atol=0)
    torch.testing.assert_close(picked, full[[3, 1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expanded[0::2], full[[3, 1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expanded[1::2], full[[3, 1]], rtol=1e-5, atol=1e-6)
    for n, r in [(3, 4), (1, 1)]:  # and each row is that row alone at its own rank
        with use_ranks(tiny, r):
            torch.testing.assert_close(tiny(x[n : n + 1])[0], full[n], rtol=1e-5, atol=1e-6)


def test_rows_with_explicit_ranks_select_from_them(tiny: TinyNet) -> None:
    x = torch.randn(4, 3, 6)
    with use_ranks(tiny, [0, 1, 2, 4]):
        full = tiny(x)
    with use_ranks(tiny, [0, 1, 2, 4], rows=[2]) as sub:
        assert sub.tolist() == [2]
        torch.testing.assert_close(tiny(x[2:3])[0], full[2], rtol=1e-5, atol=1e-6)
    assert current_ranks(tiny) is None


def test_rows_keep_one_rank_for_every_row_and_change_nothing_without_ranks(tiny: TinyNet) -> None:
    x = torch.randn(3, 2, 6)
    with use_ranks(tiny, 2):
        at_2 = tiny(x)
        with use_ranks(tiny, rows=[2, 0]) as sub:
            assert sub.tolist() == [2]
            torch.testing.assert_close(tiny(x[[2, 0]]), at_2[[2, 0]], rtol=1e-5, atol=1e-6)
    default = tiny(x)  # no block: r_max
    with use_ranks(tiny, rows=[1]) as sub:
        assert sub is None and current_ranks(tiny) is None
        torch.testing.assert_close(tiny(x[1:2])[0], default[1], rtol=1e-5, atol=1e-6)
    plain = TinyNet()  # no adapter at all: nothing to narrow
    with use_ranks(plain, rows=[0]) as sub:
        assert sub is None


def test_rows_are_checked(tiny: TinyNet) -> None:
    with use_ranks(tiny, [1, 2]):
        with pytest.raises(RankError, match=r"rows \[2\] are outside the batch of 2"):
            with use_ranks(tiny, rows=[0, 2]):
                pass
        with pytest.raises(RankError, match="no rows"):
            with use_ranks(tiny, rows=[]):
                pass
    with pytest.raises(RankError, match="needs ranks, or rows="):
        with use_ranks(tiny):
            pass
    with pytest.raises(RankError, match=r"\[3\] not in"):  # explicit ranks are validated first
        with use_ranks(tiny, [3, 1], rows=[1]):
            pass


def test_adapter_off_runs_the_base_model_and_restores_the_ranks() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    inject(model, FlexiLoraConfig(ranks=(1, 2, 4), alpha=4.0, target_modules=("q_proj", "fc2")))  # no rank 0
    randomize_adapters(model)
    base = remove(copy.deepcopy(model))
    x = torch.randn(2, 3, 6)
    with use_ranks(model, [1, 4]) as ranks:
        before = model(x)
        with adapter_off(model):
            off = model(x)
            with pytest.raises(RuntimeError, match="inside"):
                with adapter_off(model):
                    raise RuntimeError("inside")  # an error inside a nested block still restores
            assert torch.equal(model(x), off)
        assert current_ranks(model) is ranks
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert torch.equal(off, base(x)) and not torch.allclose(before, off)
    assert current_ranks(model) is None
    with adapter_off(base):  # no adapter: nothing to switch off
        assert torch.equal(base(x), off)


def _modules_outside_lora() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "lora" not in p.relative_to(PACKAGE).parts[:1]]


def test_only_the_lora_package_touches_the_rank_slot() -> None:
    """Outside ``flexispeech/lora`` nothing reads or writes the slot, its plan cache or the
    state attribute: ranks travel through use_ranks / adapter_off only."""
    private = {"slot", "rank_slot", "plan_cache"}
    offenders = []
    for path in _modules_outside_lora():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Name) and node.id in ("RankSlot", "STATE_ATTR"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.id}")
            elif isinstance(node, ast.alias) and node.name in ("RankSlot", "STATE_ATTR", "_ranks_in_force"):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {node.name}")
            elif isinstance(node, ast.Constant) and node.value == "_flexispeech":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} '_flexispeech'")
    assert len(_modules_outside_lora()) > 20 and offenders == []


def _lora_imports(path: Path) -> set[str]:
    """The ``flexispeech.lora`` modules ``path`` imports anywhere (function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flexispeech.lora."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "flexispeech.lora":
            found |= {alias.name for alias in node.names if (PACKAGE / "lora" / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("flexispeech.lora.")}
    return found


def test_lora_modules_import_each_other_without_cycles() -> None:
    graph = {p.stem: _lora_imports(p) for p in (PACKAGE / "lora").glob("*.py") if p.stem != "__init__"}
    assert graph["layer"] >= {"ranks", "kernels"} and graph["inject"] >= {"layer", "ranks"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(module) :], module)))
        if module not in done:
            for dep in sorted(graph.get(module, ())):
                visit(dep, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
