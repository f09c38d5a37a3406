"""report.html and report.md: a synthetic GPU-like run (timings, an LLM ledger, a NanoGPT build, hostile
candidate text) and a real CPU run made through the CLI; then the page as headless Chromium renders it.

The page's tables and charts are read back with html.parser (from the file and from Chromium's DOM), so
every check is about what a reader sees, not about how the page happens to be written.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agents.app.html_report import NOT_MEASURED, markdown_report, write_html, write_markdown
from agents.run_folder import RunFolder
from conftest import EVOLVE, PROJECT_ROOT

HOSTILE_SOURCE_LINE = "# </pre><script>alert(1)</script> see https://evil.example/x.js ```"
HOSTILE_DETAIL = "<img src=x onerror=alert(2)> | broke the table"
DEVICE = {"torch": "2.11.0+cu130", "triton": "3.5.0", "name": "NVIDIA H200", "arch": "sm_90", "sm_count": 132,
          "ceilings": {"copy_gbps": 3912.5, "matmul_tflops": 702.0, "method": "copy and matmul"}}
TIMING_KEYS = ("speedup_eager", "speedup_compile", "roofline_fraction", "gbps", "tflops", "candidate_ms",
               "eager_ms", "compile_ms")


def kernel_source(warps: int, persistent: bool, extra: str = "") -> str:
    return ("import triton\nimport triton.language as tl\n\n"
            f"NUM_WARPS = {warps}\nPERSISTENT = {persistent}\n{extra}\n"
            "@triton.jit\ndef kernel(x_ptr, y_ptr, n):\n    pid = tl.program_id(0)\n")


def timing(eager: float, compile_: float, roofline: float, gbps: float | None = None,
           tflops: float | None = None) -> dict:
    return {"candidate_ms": 0.01, "eager_ms": 0.01 * eager, "compile_ms": 0.01 * compile_, "speedup_eager": eager,
            "speedup_compile": compile_, "gbps": gbps, "tflops": tflops, "roofline_fraction": roofline,
            "spread": 0.01, "copy_fraction": 0.9, "headline": "gpt2 bfloat16", "shapes": [],
            "ceilings": DEVICE["ceilings"]}


# op -> candidates: (id, origin, parents, source or None for an unusable answer, status, failure, timing)
CANDIDATES = {
    "layer_norm": [
        ("c001", "rules", [], kernel_source(4, True), "accepted", None, timing(1.10, 0.95, 0.55, gbps=2150.0)),
        ("c002", "test:rowwise.persistent-grid", ["c001"], kernel_source(4, False), "accepted", None,
         timing(1.30, 1.12, 0.64, gbps=2500.0)),
        ("c003", "mutation", ["c002"], kernel_source(2, False), "failed",
         {"class": "compile_error", "detail": HOSTILE_DETAIL}, None),
        ("c004", "mutation", ["c002"], kernel_source(8, False, HOSTILE_SOURCE_LINE), "accepted", None,
         timing(1.62, 1.41, 0.81, gbps=3170.0)),
        ("c005", "explore", [], kernel_source(1, True), "rejected",
         {"class": "wrong_result", "detail": "max abs error 0.5"}, None),
    ],
    "attention": [
        ("c001", "llm", [], kernel_source(4, False), "accepted", None, timing(0.80, 0.70, 0.20, tflops=140.0)),
        ("c002", "llm-repair", ["c001"], kernel_source(8, False), "accepted", None,
         timing(1.25, 1.05, 0.35, tflops=245.0)),
        ("c003", "llm", [], None, "rejected", {"class": "no_code", "detail": "the answer holds no code block"}, None),
    ],
}
WINNERS = {"layer_norm": "c004", "attention": "c002"}
CONVERGENCE = {
    "steps": 40, "logged": [0, 10, 20, 30, 39], "torch": [4.1, 2.6, 2.0, 1.7, 1.55],
    "triton": [4.1, 2.62, 1.98, 1.71, 1.56], "torch_repeat": [4.1, 2.61, 2.01, 1.69, 1.55],
    "worst_relative_gap": 0.0101, "torch_self_gap": 0.008, "tolerance": 0.02, "allowed": 0.02, "passed": True,
    "tokens_per_s": {"torch": 2.1e6, "triton": 2.7e6},
}
BENCH_ROWS = [
    {"kind": "train", "variant": "eager", "label": "PyTorch eager", "batch": 64, "seq": 256, "ms": 13.346,
     "tokens_per_s": 1227621.6, "peak_mib": 1647.1, "error": None, "vs_eager": 1.0, "vs_compile": 0.9596,
     "vs_reduce_overhead": 0.3739},
    {"kind": "train", "variant": "ours-graph", "label": "ours, one CUDA graph", "batch": 64, "seq": 256,
     "ms": 5.030, "tokens_per_s": 3257229.7, "peak_mib": 1770.5, "error": None, "vs_eager": 2.6533,
     "vs_compile": 2.5462, "vs_reduce_overhead": 0.9920},
    {"kind": "inference", "variant": "ours-compile", "label": "ours under torch.compile", "batch": 1, "seq": 128,
     "ms": None, "tokens_per_s": None, "peak_mib": None, "error": "<b>compile failed</b>", "vs_eager": None,
     "vs_compile": None, "vs_reduce_overhead": None},
]
LLM = {"model": "qwen-coder", "coder": "mixed", "calls": 7, "failed_calls": 1, "prompt_tokens": 41234,
       "completion_tokens": 9876, "tokens": 51110, "cost": 0.1234, "budget": {"tokens": 200000, "cost": None},
       "budget_spent": None, "replay_of": None}


def make_gpu_run(runs_dir: Path) -> RunFolder:
    """A run folder shaped as a GPU run writes it: events as the search graph logs them, then the summary."""
    folder = RunFolder.create(runs_dir, "nanogpt", "[run]\nbudget = 5\n", DEVICE, list(CANDIDATES))
    for op, rows in CANDIDATES.items():
        summary = folder.op_summary(op)
        folder.log("plan", op=op, budget=len(rows), rules=[], suggestions={}, tests=[], incumbent=None, notes=[])
        for cid, origin, parents, source, status, failure, timed in rows:
            pending = {"id": cid, "op": op, "origin": origin, "params": None, "parents": parents}
            if source is None:
                pending["unusable"] = dict(failure)
            else:
                pending["path"] = str(folder.write_candidate(op, cid, source))
            folder.log("candidate", **pending, note="")
            folder.log("verdict", id=cid, op=op, status=status, failure=failure, checks=[], timing=timed,
                       device=DEVICE, candidate=pending.get("path", ""), seconds=1.5, stderr="")
            summary["candidates"] += 1
            if status == "accepted":
                summary["accepted"] += 1
            else:
                summary["failures"][failure["class"]] = summary["failures"].get(failure["class"], 0) + 1
        winner = next(r for r in rows if r[0] == WINNERS[op])
        summary["best"] = {"candidate": winner[0], "path": str(folder.candidate_path(op, winner[0])),
                           "origin": winner[1], "params": None, **{k: winner[6].get(k) for k in TIMING_KEYS}}
        summary["promoted"], summary["promotion"] = True, "first kernel for this op on this device"
        folder.log("promotion", op=op, promoted=True, candidate=winner[0], path="memory/x.py",
                   reason=summary["promotion"], ab=None)
    lessons = [{"rule": "rowwise.persistent-grid", "verdict": "refuted", "effect": "-14.0% without it",
                "recorded": True}, {"rule": "rowwise.pow2-masking", "verdict": "confirmed",
                                    "effect": "+9.5% with it", "recorded": True}]
    folder.op_summary("layer_norm")["lessons"] = lessons
    for lesson in lessons:
        folder.log("lesson", op="layer_norm", **lesson)
    learned = {"rule": "learned.attention.wide-tiles", "statement": "wide <tiles> win at 64 heads", "when": {},
               "suggests": {"BLOCK_N": 128}, "confidence": 0.6, "learned_on": "NVIDIA H200", "path": "memory/l.toml"}
    folder.op_summary("attention")["reflections"] = [learned]
    folder.log("reflection", op="attention", **learned)
    folder.log("reflection", op="attention", error="lesson refused: names no knob")
    folder.summary["llm"] = LLM
    folder.op_summary("attention")["llm"] = {k: LLM[k] for k in ("calls", "failed_calls", "prompt_tokens",
                                                                  "completion_tokens", "tokens", "cost")}
    folder.summary["model"] = {
        "device": "NVIDIA H200", "kernels": {"layer_norm": "promoted", "attention": "promoted"},
        "invariants": [{"name": "weight tying", "passed": True, "detail": "tied"}],
        "parity": [{"dtype": "float32", "passed": True, "failures": [], "worst": "grad wte", "worst_error": 1.1e-6,
                    "logits_error": 1.0e-6, "loss_error": 1.2e-7, "quantities": 78}],
        "convergence": CONVERGENCE, "passed": True,
        "bench": {"shakespeare-char": {"model": "shakespeare-char", "gpu": "NVIDIA H200", "torch": "2.11.0+cu130",
                                       "kernels": {}, "timing": {"warmup": 10, "steps": 20, "windows": 5},
                                       "rows": BENCH_ROWS}},
    }
    folder.finish("complete")
    return folder


# ----------------------------------------------------------------------------- reading a page back

class PageReader(HTMLParser):
    """Tables (data-table -> rows of cell texts), charts (data-chart -> their elements), tags and attributes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: dict[str, list[tuple[str, dict]]] = {}
        self.tags: set[str] = set()
        self.attributes: list[str] = []
        self.texts: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._chart: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.tags.add(tag)
        self.attributes += [f"{k}={v}" for k, v in attrs.items()]
        if tag == "table":
            self._table = attrs.get("data-table")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "svg":
            self._chart = attrs.get("data-chart")
            self.charts[self._chart] = []
        elif self._chart is not None:
            self.charts[self._chart].append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "svg":
            self._chart = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def body_rows(self, name: str) -> list[list[str]]:
        return self.tables[name][1:]  # the first row holds the headers


def drawn(elements: list[tuple[str, dict]]) -> list[str]:
    """The chart's elements that draw something: a path through two points, a bar or a dot of some size."""
    out = []
    for tag, a in elements:
        if tag == "path" and len(re.findall(r"-?\d+(?:\.\d+)?", a.get("d", ""))) >= 3:
            out.append(a.get("class", ""))
        elif tag == "rect" and "bar" in a.get("class", "") and float(a["width"]) > 0 and float(a["height"]) > 0:
            out.append(a["class"])
        elif tag == "circle" and float(a.get("r", 0)) > 0:
            out.append(a.get("class", ""))
    return out


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> RunFolder:
    folder = make_gpu_run(tmp_path_factory.mktemp("runs"))
    write_html(folder)
    write_markdown(folder)
    return folder


@pytest.fixture(scope="module")
def page(gpu_run: RunFolder) -> str:
    return (gpu_run.path / "report.html").read_text()


# ----------------------------------------------------------------------------- the page and the markdown

def test_tables_hold_the_summarys_numbers(gpu_run: RunFolder, page: str) -> None:
    reader = PageReader(page)
    ops = {row[0]: row for row in reader.body_rows("ops")}
    for op, o in gpu_run.summary["ops"].items():
        best = o["best"]
        row = ops[op]
        assert row[1:3] == [str(o["candidates"]), str(o["accepted"])]
        assert row[3] == f"{best['candidate']} {best['origin']}"
        assert row[4:7] == [f"{best['speedup_eager']:.2f}x", f"{best['speedup_compile']:.2f}x",
                            f"{best['roofline_fraction']:.0%}"]
    assert ops["layer_norm"][7] == "3,170 GB/s" and ops["attention"][7] == "245 TF/s"
    assert sorted(map(tuple, reader.body_rows("failures"))) == [
        ("attention", "no_code", "1"), ("layer_norm", "compile_error", "1"), ("layer_norm", "wrong_result", "1")]
    candidates = reader.body_rows("candidates-layer_norm")
    assert [r[1] for r in candidates] == ["c001", "c002", "c003", "c004", "c005"]
    assert [r[6] for r in candidates] == ["0.95x", "1.12x", "—", "1.41x", "—"]
    assert [r[8] for r in candidates] == ["c001 0.95x", "c002 1.12x", "c002 1.12x", "c004 1.41x", "c004 1.41x"]
    assert reader.body_rows("device")[0] == ["NVIDIA H200", "sm_90", "2.11.0+cu130", "3.5.0", "3,912 GB/s",
                                              "702 TFLOP/s"]
    assert reader.body_rows("llm")[0] == ["run", "7", "1", "41,234", "9,876", "0.1234"]
    bench = reader.body_rows("bench-shakespeare-char")
    assert bench[1][3:5] == ["5.030", "3,257,230"] and bench[1][6:8] == ["2.65x", "2.55x"]
    assert bench[2][3] == "failed: <b>compile failed</b>"  # shown as text, not markup
    rules = {(r[1], r[2]) for r in reader.body_rows("rules")}
    assert {("rowwise.persistent-grid", "refuted"), ("rowwise.pow2-masking", "confirmed"),
            ("learned.attention.wide-tiles", "learned"), ("—", "not learned")} <= rules


def test_page_is_self_contained_and_inert(page: str) -> None:
    reader = PageReader(page)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert not reader.tags & {"script", "img", "link", "iframe", "object", "embed", "a", "base", "form"}
    # a URL may appear only as text the run folder holds (the hostile source's comment), never as markup
    assert not [a for a in reader.attributes if re.search(r"https?:|//|url\(", a)]
    markup = re.sub(r">[^<]*<", "><", page)
    assert "http://" not in markup and "https://" not in markup and "@import" not in page
    assert html.escape(HOSTILE_SOURCE_LINE) in page and html.escape(HOSTILE_DETAIL) in page
    assert HOSTILE_SOURCE_LINE in "".join(reader.texts)  # a reader sees the hostile text as written


def test_charts_are_drawn(page: str) -> None:
    charts = PageReader(page).charts
    assert set(charts) == {"speedup-layer_norm", "roofline-layer_norm", "speedup-attention", "roofline-attention",
                           "loss"}
    speedup = drawn(charts["speedup-layer_norm"])
    assert speedup.count("series best") == 1 and sum("marker" in c for c in speedup) == 5  # 3 dots, 2 crosses
    assert sum("bar" in c for c in drawn(charts["roofline-layer_norm"])) == 3
    assert "bar winner" in drawn(charts["roofline-layer_norm"])
    assert sum(c.startswith("series") for c in drawn(charts["loss"])) == 3  # torch, triton, torch again


def test_lineage_and_diff(page: str) -> None:
    reader = PageReader(page)
    assert [r[1] for r in reader.body_rows("lineage-layer_norm")] == ["c004", "c002", "c001"]
    assert [r[2] for r in reader.body_rows("lineage-layer_norm")] == ["mutation", "test:rowwise.persistent-grid",
                                                                       "rules"]
    diff = re.search(r'<details data-code="diff-layer_norm" open><summary>(.*?)</summary><pre>(.*?)</pre>', page, re.DOTALL)
    assert html.unescape(diff.group(1)) == "diff c002 → c004"
    lines = html.unescape(re.sub(r"<[^>]+>", "", diff.group(2))).splitlines()
    assert lines[:2] == ["--- c002.py", "+++ c004.py"]
    assert "-NUM_WARPS = 4" in lines and "+NUM_WARPS = 8" in lines and "+" + HOSTILE_SOURCE_LINE in lines
    assert "-PERSISTENT = False" not in lines  # unchanged lines are context
    assert 'data-code="diff-attention"' in page and 'data-code="source-attention"' in page


def test_markdown_says_the_same(gpu_run: RunFolder, page: str) -> None:
    markdown = (gpu_run.path / "report.md").read_text()
    assert markdown == markdown_report(gpu_run)
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in markdown.splitlines() if line.startswith("| ")]
    for op, o in gpu_run.summary["ops"].items():
        best = o["best"]
        assert [op, str(o["candidates"]), str(o["accepted"]), f"{best['candidate']} {best['origin']}",
                f"{best['speedup_eager']:.2f}x", f"{best['speedup_compile']:.2f}x",
                f"{best['roofline_fraction']:.0%}"] in [r[:7] for r in rows]
    assert ["4", "c004", "accepted", "1.41x", "1.41x"] in rows  # the speedup chart as numbers
    assert ["39", "1.5500", "1.5600", "1.5500"] in rows  # the loss curves as numbers
    # hostile text: escaped in tables; whole inside a fence longer than the backticks it holds
    outside_code = re.sub(r"^(`{3,})\w*\n.*?^\1$", "", markdown, flags=re.DOTALL | re.MULTILINE)
    assert "<img" not in outside_code and "<script" not in outside_code and "<b>" not in outside_code
    assert "&lt;img src=x onerror=alert(2)&gt; \\| broke the table" in markdown
    assert f"````python\n{kernel_source(8, False, HOSTILE_SOURCE_LINE).rstrip()}\n````" in markdown
    assert "-NUM_WARPS = 4\n+NUM_WARPS = 8" in markdown


def test_cpu_run_through_the_cli(config_file: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EVOLVE_CONFIG", None)
    done = subprocess.run([*EVOLVE, "--config", str(config_file), "run", "nanogpt", "--ops", "layer_norm",
                           "--budget", "2", "--device", "cpu", "--no-assemble"], cwd=PROJECT_ROOT,
                          check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = RunFolder.open(config_file.parent / "runs", "latest")
    page = write_html(folder).read_text()
    markdown = write_markdown(folder).read_text()
    reader = PageReader(page)
    assert NOT_MEASURED in reader.texts and NOT_MEASURED in markdown
    assert not reader.charts  # nothing timed: no speed chart, no roofline
    summary = folder.summary["ops"]["layer_norm"]
    row = reader.body_rows("ops")[0]
    assert row[:3] == ["layer_norm", str(summary["candidates"]), str(summary["accepted"])] and row[4:7] == ["—"] * 3
    assert [r[1] for r in reader.body_rows("candidates-layer_norm")] == ["c001", "c002"]
    assert reader.body_rows("lineage-layer_norm")[0][1] == summary["best"]["candidate"]
    assert {r[2] for r in reader.body_rows("rules")} == {"inconclusive"}
    assert 'data-code="source-layer_norm"' in page and "@triton.jit" in html.unescape(page)
    assert reader.body_rows("device")[0][:2] == ["cpu", "interpreter"]


def test_import_leaves_torch_alone() -> None:
    code = "import sys, agents.app.html_report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=False, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ----------------------------------------------------------------------------- headless Chromium

def _install_chromium() -> str | None:
    """Debian's chromium, when this process may install packages; None (and why) otherwise."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return "no chromium on PATH, and no apt-get as root to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        done = subprocess.run(install, check=False, capture_output=True, text=True, timeout=600, env=env)
        if done.returncode != 0:  # package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=300, env=env)
            done = subprocess.run(install, check=False, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return "installing chromium took over the time allowed"
    return None if done.returncode == 0 else f"apt-get could not install chromium: {done.stderr[-300:]}"


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = _install_chromium()
        found = shutil.which("chromium") or shutil.which("chromium-browser")
        if found is None:
            pytest.skip(why or "chromium not found after installing it")
    return found


def run_chromium(chromium: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # console messages (errors, uncaught exceptions, refused loads) reach stderr as "...:CONSOLE..." lines
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", *args, page.as_uri()]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw pixels) of an 8-bit RGB or RGBA PNG, by the PNG spec's filters."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.setdefault(kind, []).append(data[at + 8:at + 8 + length])
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride, previous, rows = width * bpp, bytearray(width * bpp), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            else:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, b"".join(rows)


def test_console_errors_are_seen(chromium: str, tmp_path: Path) -> None:
    """The detector itself: a page that logs an error and throws is caught, so silence below means something."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><p>x</p><script>console.error('seen'); missingFunction();</script>")
    lines = console_lines(run_chromium(chromium, broken, tmp_path / "profile", "--dump-dom").stderr)
    assert any("seen" in line for line in lines) and any("Uncaught ReferenceError" in line for line in lines)


def test_chromium_renders_the_page(chromium: str, gpu_run: RunFolder, tmp_path: Path) -> None:
    report = gpu_run.path / "report.html"
    dom = run_chromium(chromium, report, tmp_path / "profile", "--dump-dom")
    shot = tmp_path / "shot.png"
    screenshot = run_chromium(chromium, report, tmp_path / "profile", f"--screenshot={shot}",
                              "--window-size=1280,2400")
    assert console_lines(dom.stderr + screenshot.stderr) == []
    reader = PageReader(dom.stdout)
    assert set(reader.charts) >= {"speedup-layer_norm", "roofline-layer_norm", "loss"}
    assert all(drawn(elements) for elements in reader.charts.values())
    assert reader.tables == PageReader(report.read_text()).tables  # every table as written, summary's numbers too
    for op, o in gpu_run.summary["ops"].items():
        assert [op, str(o["candidates"]), str(o["accepted"])] in [row[:3] for row in reader.body_rows("ops")]
        assert f"{o['best']['speedup_compile']:.2f}x" in {row[5] for row in reader.body_rows("ops")}
    assert "<script" not in dom.stdout.lower()
    width, height, bpp, pixels = png_pixels(shot)
    assert (width, height) == (1280, 2400)
    grey = pixels[::bpp * 7]  # one channel of every 7th pixel: enough to tell a page from a blank
    mean = sum(grey) / len(grey)
    variance = sum((v - mean) ** 2 for v in grey) / len(grey)
    assert variance > 50, f"the screenshot looks blank (variance {variance:.1f})"
    assert len(set(grey)) > 20
