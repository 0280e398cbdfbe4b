"""The README's quickstart really runs and prints what it says."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch, capsys) -> None:
    block = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README has no Quickstart python block"
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("[0, 4, 16] ")  # the ranks the comment promises
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
