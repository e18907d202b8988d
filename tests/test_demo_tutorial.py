"""The runnable Python example of docs/tutorial.md runs as written."""
import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_activation_mode_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    example = next(b for b in blocks if "choose_activation_modes(" in b)
    exec(compile(example, str(TUTORIAL), "exec"), {})
    out = capsys.readouterr().out
    assert "LayerSensitivity(sqnr_dynamic_db=" in out and "torch.Size([4, 64])" in out
