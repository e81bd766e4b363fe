"""The benchmark scripts write docs/BENCHMARKS.md one section at a time (benchmarks/doc_sections.py):
a write changes only the text between its own markers, appends an absent section, refuses broken
markers, and every table a writer emits is headed by the machine / threads / versions / command /
date line. The writers are called directly with small made-up results on a temporary file."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import each other as top-level modules
try:
    doc_sections = importlib.import_module("doc_sections")
    backbone = importlib.import_module("backbone")
    peers = importlib.import_module("peers")
    landmark_bound = importlib.import_module("landmark_bound")
    _spec = importlib.util.spec_from_file_location("benchmarks_ops", BENCH / "ops.py")
    ops = importlib.util.module_from_spec(_spec)  # not "ops": the name is too common to claim
    _spec.loader.exec_module(ops)
finally:
    sys.path.remove(str(BENCH))

write_section, SectionError = doc_sections.write_section, doc_sections.SectionError

HEADER = re.compile(r"Machine: [^;\n]+, \d+ cores, \d+ threads; torch [^,;\n]+(, timm [^,;\n]+)?(, detectron2 [^,;\n]+)?; "
                    r"command: `python benchmarks/[a-z_]+\.py[^`\n]*`; date: \d{4}-\d{2}-\d{2}\.")

DOC = ("# Title\n\nSome prose  \twith trailing space \r\nand a CRLF line, ünïcode.\n\n"
       "<!-- alpha:begin (written by benchmarks/old_name.py --flag) -->\nold alpha\n<!-- alpha:end -->\n"
       "between the sections\n"
       "<!-- alpha-two:begin (written by x) -->\nother\n<!-- alpha-two:end -->\n\ntail without newline")


def section(text: str, name: str) -> tuple[str, str, str]:
    """(before, the section with its markers, after), found independently of write_section."""
    match = re.search(r"<!-- " + re.escape(name) + r":begin[^\n]*-->.*?<!-- " + re.escape(name) + r":end -->",
                      text, re.S)
    assert match, f"no section {name}"
    return text[:match.start()], match.group(0), text[match.end():]


# ------------------------------------------------------------------------------ write_section
def test_replaces_one_section_and_leaves_every_other_byte(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_bytes(DOC.encode())
    write_section(doc, "alpha", "new alpha\n\n| a |\n|---|\n", "benchmarks/new.py --x")
    before, _, after = section(DOC, "alpha")
    assert doc.read_bytes() == (before + "<!-- alpha:begin (written by benchmarks/new.py --x) -->\nnew alpha\n\n"
                                "| a |\n|---|\n<!-- alpha:end -->" + after).encode()
    # again: the same bytes (a rewrite is stable), the neighbour whose name starts alike untouched
    once = doc.read_bytes()
    write_section(doc, "alpha", "new alpha\n\n| a |\n|---|\n", "benchmarks/new.py --x")
    assert doc.read_bytes() == once
    assert section(doc.read_text(), "alpha-two")[1] == section(DOC, "alpha-two")[1]


def test_a_begin_marker_without_parenthesis_is_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- s:begin -->\nx\n<!-- s:end -->\nb\n")
    write_section(doc, "s", "y", "me")
    assert doc.read_text() == "a\n<!-- s:begin (written by me) -->\ny\n<!-- s:end -->\nb\n"


def test_appends_an_absent_section(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_bytes(DOC.encode())
    write_section(doc, "beta", "beta body", "benchmarks/beta.py")
    block = "<!-- beta:begin (written by benchmarks/beta.py) -->\nbeta body\n<!-- beta:end -->\n"
    assert doc.read_bytes() == (DOC + "\n\n" + block).encode()  # the old text ended without a newline
    write_section(doc, "gamma", "g", "c")
    assert doc.read_text().endswith(block + "\n<!-- gamma:begin (written by c) -->\ng\n<!-- gamma:end -->\n")
    new = tmp_path / "sub" / "new.md"
    write_section(new, "beta", "beta body", "benchmarks/beta.py")
    assert new.read_text() == block
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain new file's mode, not the temp file's 0600


@pytest.mark.parametrize("text, problem", [
    ("x\n<!-- s:begin (written by a) -->\nbody\n", "without an end marker"),
    ("<!-- s:begin (written by a) -->\n1\n<!-- s:end -->\n<!-- s:begin (written by b) -->\n2\n<!-- s:end -->\n",
     "2 begin markers"),
    ("<!-- s:begin (written by a) -->\n1\n<!-- s:end -->\n<!-- s:end -->\n", "2 end markers"),
    ("x\n<!-- s:end -->\n", "end marker without a begin marker"),
    ("<!-- s:end -->\n<!-- s:begin (written by a) -->\n", "before the begin marker"),
])
def test_broken_markers_raise_and_leave_the_file(tmp_path, text, problem):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    with pytest.raises(SectionError, match=problem):
        write_section(doc, "s", "new", "me")
    assert doc.read_text() == text
    assert os.listdir(tmp_path) == ["doc.md"]


def test_the_write_is_atomic(tmp_path, monkeypatch):
    """The new text goes to a temporary file moved over the old one; a failed move leaves the old
    file whole and no temporary file behind."""
    doc = tmp_path / "doc.md"
    doc.write_bytes(DOC.encode())
    moves = []

    def failing_replace(src, dst):
        moves.append((Path(src).parent, Path(dst)))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_section(doc, "alpha", "new", "me")
    assert moves == [(tmp_path, doc)]
    assert doc.read_bytes() == DOC.encode() and os.listdir(tmp_path) == ["doc.md"]


def test_bad_names_and_commands_are_refused(tmp_path):
    for name, command in [("a b", "c"), ("", "c"), ("a", "x --> y"), ("a", "two\nlines")]:
        with pytest.raises(ValueError):
            write_section(tmp_path / "doc.md", name, "body", command)


# ------------------------------------------------------------------------------ the writers
@pytest.fixture
def real_doc(tmp_path):
    """A copy of docs/BENCHMARKS.md (every section the writers know, and the prose around them),
    with text after its last section."""
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_bytes((ROOT / "docs" / "BENCHMARKS.md").read_bytes() + b"\nText after every section.\n")
    return doc


def check_only_section_changed(old: str, new: str, name: str, marker_command: str) -> str:
    """The text outside section ``name`` is unchanged (or, for a new section, the old text is a
    prefix); every table inside is headed by a header line. Returns the section."""
    if f"<!-- {name}:begin" in old:
        before, _, after = section(old, name)
        new_before, inside, new_after = section(new, name)
        assert (new_before, new_after) == (before, after)
    else:
        assert new.startswith(old)
        inside = section(new, name)[1]
    assert inside.startswith(f"<!-- {name}:begin (written by {marker_command}) -->\n")
    lines = inside.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and not lines[i - 1].startswith("|")]
    assert starts, "no table in the section"
    for i in starts:
        above = [line for line in lines[:i] if line.strip()][-1]
        assert HEADER.fullmatch(above), (above, lines[i])
    return inside


def test_backbone_writes_only_its_section(real_doc):
    rows = [dict(model="soft_norm_tiny", bound=100, size=(224, 224), time_s=0.1, peak_mb=21.0, gflops=3.9),
            dict(model="soft_norm_tiny", bound=None, size=(1024, 1792), error="skipped (minutes)"),
            dict(model="r50", bound=None, size=(224, 224), time_s=0.1, peak_mb=30.0, gflops=7.7)]
    trade = [dict(model="soft_norm_tiny", bound=49, size=(800, 1344), time_s=1.0, peak_mb=334.0, gflops=80.8),
             dict(model="soft_norm_tiny", bound=None, size=(800, 1344), time_s=16.8, peak_mb=708.0, gflops=285.3)]
    old = real_doc.read_text()
    backbone.write_doc(rows, trade, 100, 2, real_doc, command="python benchmarks/backbone.py")
    inside = check_only_section_changed(old, real_doc.read_text(), "backbone", "benchmarks/backbone.py")
    assert "2 threads; torch " in inside and ", timm " in inside and ", detectron2 " in inside
    assert "| soft_norm_tiny | faithful | 1024x1792 | skipped (minutes) |" in inside


def test_peers_writes_only_its_section(real_doc):
    entries = [dict(model="soft_norm_tiny", bound=100), dict(model="resnet50", bound=None)]
    sizes = [(224, 224), (800, 1344)]
    summary = {peers.case_key(dict(entries[1], kind="forward", size=(224, 224))):
               dict(time_s=0.12, peak_mb=40.0, rounds_ok=2, rounds=2)}
    text = peers.table(entries, summary, sizes, 32)
    settings = dict(repeats=3, rounds=2, train_steps=3, train_batch=32, bound=100, threads=2)
    old = real_doc.read_text()
    peers.write_doc(text, settings, 0.01, sizes, real_doc, command="python benchmarks/peers.py")
    inside = check_only_section_changed(old, real_doc.read_text(), "peers", "benchmarks/peers.py")
    assert "| resnet50 | - | not run | not run | not run | 0.120 |" in inside


def test_landmark_bound_writes_only_its_sections(real_doc, tmp_path):
    feature_rows = [dict(size=160, scale=1, bound=None, landmarks=[25, 25, 25], top1=97.6, top1_probe=97.1,
                         images=420, probe_images=280, rel_err=None),
                    dict(size=320, scale=2, bound=49, landmarks=[49, 49, 49], top1=57.9, top1_probe=86.4,
                         images=420, probe_images=280, rel_err=[0.0003, 0.0006, 0.0016, 0.0044])]
    detection_rows = [dict(bound=b, seed=s, AP=28.0, AP50=46.0, AP75=30.0, APs=25.0, APm=35.0, APl=26.0)
                      for b in (100, None) for s in (1, 2)]
    cost_results = {100: [dict(bound=100, time_s=2.2, peak_mb=2199.0)] * 3,
                    None: [dict(bound=None, time_s=7.7, peak_mb=2297.0)] * 3}
    docs = {"features": landmark_bound.features_doc(feature_rows, tmp_path / "best.pth", 40),
            "detection": landmark_bound.detection_doc(detection_rows),
            "cost": landmark_bound.cost_doc(cost_results, (512, 704), 3, 3)}
    for which, (intro, table) in docs.items():
        old = real_doc.read_text()
        landmark_bound.write_doc(which, intro, table, real_doc, command=f"python benchmarks/landmark_bound.py {which}")
        inside = check_only_section_changed(old, real_doc.read_text(), f"landmark-{which}",
                                            f"benchmarks/landmark_bound.py {which}")
        assert intro in inside
    assert "| faithful | mean | 28.0 | 46.0 | 30.0 | | | |" in real_doc.read_text()


def test_ops_writes_one_section_per_device(real_doc, monkeypatch):
    results = [dict(shape="224 stage-1", impl=impl, mode="fwd", time_s=t, peak_bytes=b, repeats=3)
               for impl, t, b in [("compiled", 0.003, 7 << 20), ("release", 0.003, 13 << 20)]]
    old = real_doc.read_text()
    command = "python benchmarks/ops.py --shapes '224 stage-1'"
    ops.write_doc(ops.section_body(results, "cpu", 2, command), "cpu", real_doc)
    cpu = check_only_section_changed(old, real_doc.read_text(), "ops-cpu", "benchmarks/ops.py")
    assert "`python benchmarks/ops.py --shapes '224 stage-1'`" in cpu
    monkeypatch.setattr(backbone, "machine", lambda device="cpu": f"NVIDIA H200 (CUDA 13.0), host {device}, 16 cores")
    old = real_doc.read_text()
    ops.write_doc(ops.section_body(results, "cuda", 16, "python benchmarks/ops.py --device cuda", (4e12, 5e13)),
                  "cuda", real_doc)
    cuda = check_only_section_changed(old, real_doc.read_text(), "ops-cuda", "benchmarks/ops.py")
    assert cuda.count("Machine: NVIDIA H200") == 2 and "Ceilings measured here" in cuda  # both tables headed
    assert section(real_doc.read_text(), "ops-cpu")[1] == cpu


# ------------------------------------------------------------------------------ the rule
def test_the_writing_rule(capsys):
    target = backbone.doc_target
    assert target(None, False, partial=False) == backbone.DOC
    assert target(None, True, partial=False) is None
    assert target(None, False, partial=True) is None and "partial run" in capsys.readouterr().out
    assert target(Path("out.md"), False, partial=True) == Path("out.md")


def test_the_command_line_is_the_one_to_rerun():
    argv = [str(BENCH / "ops.py"), "--shapes", "224 stage-1", "--threads", "2"]
    assert backbone.command_line(argv) == "python benchmarks/ops.py --shapes '224 stage-1' --threads 2"
    line = backbone.header_line("python benchmarks/ops.py", 3, ("torch", "timm"))
    assert HEADER.fullmatch(line) and ", 3 threads; torch " in line and "\n" not in line
