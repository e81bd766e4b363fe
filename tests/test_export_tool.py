"""tools/export_model.py: exports, reloads and checks against eager; refuses what it cannot export."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def export_tool():
    spec = importlib.util.spec_from_file_location("export_model", ROOT / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classifier_exports_with_dynamic_size(tmp_path, capsys):
    tool = export_tool()
    assert tool.main(["--variant", "soft_norm_tiny", "--size", "64x96", "--format", "torch",
                      "--output", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert report.count("max |diff|") == 3 and "dynamic height/width" in report  # 64x96 and two other sizes
    program = torch.export.load(tmp_path / "model.pt2").module()
    assert program(torch.randn(1, 3, 96, 80)).shape == (1, 1000)


def test_tool_refuses_a_dynamic_size_below_its_minimum(tmp_path):
    with pytest.raises(SystemExit):
        export_tool().main(["--variant", "soft_norm_tiny", "--size", "32x64", "--output", str(tmp_path)])
