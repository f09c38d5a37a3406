"""One run as a self-contained web page (report.html) and as GitHub markdown (report.md).

Three layers, so the page and the markdown can never disagree:
  build_report(folder) -> plain data read from the run folder alone (summary.json, events.jsonl, sources);
  document(report)     -> a list of blocks (headings, paragraphs, tables, charts, code) in reading order;
  one renderer per format turns the blocks into HTML (charts as hand-written inline SVG) or markdown
  (charts as small tables of the same numbers).
The page loads nothing: inline CSS, inline SVG, no script, and a Content-Security-Policy that forbids
every fetch, so it opens offline and stays inert. Everything read from the run folder is treated as
hostile text (candidate sources and failure details are written by whoever wrote the candidate) and is
escaped where it is rendered, in exactly one place per format.
"""
from __future__ import annotations

import difflib
import html
import re
from pathlib import Path
from typing import Any

from agents.app.report import llm_lines, model_lines, rate_text
from agents.app.svg_charts import (bar_chart, finite_number, line_chart, number_text, percent_text, ratio_text,
                                   step_chart)
from agents.run_folder import RunFolder

NOT_MEASURED = "Speed not measured: Triton's CPU interpreter checks correctness only."
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # an op or candidate id that names a file
Block = dict[str, Any]


# ----------------------------------------------------------------------------- the report as plain data

def build_report(folder: RunFolder) -> dict:
    """Everything the page and the markdown show, as plain data."""
    summary = getattr(folder, "summary", None) or folder.read_summary()  # RunFolder(path) has not read it
    device = summary.get("device") or {}
    events = folder.events()
    return {
        "run": {k: summary.get(k) for k in ("run_id", "target", "status", "started", "finished")},
        "device": {**{k: device.get(k) or "?" for k in ("name", "arch", "torch", "triton")},
                   "ceilings": device.get("ceilings") or {}},
        "timed": device.get("arch") != "interpreter",
        "ops": [_op_report(folder, op, o or {}, events, device.get("ceilings") or {})
                for op, o in (summary.get("ops") or {}).items()],
        "llm": _llm_report(summary),
        "model": _model_report(summary),
    }


def _bound(op: str) -> str:
    from kernels import get_spec  # imports torch: only when a report is built

    try:
        return get_spec(op).bound
    except KeyError:  # an op of an older version of the project
        return "memory"


def _op_report(folder: RunFolder, op: str, o: dict, events: list[dict], ceilings: dict) -> dict:
    proposed = [e for e in events if e.get("kind") == "candidate" and e.get("op") == op]
    verdicts = {e.get("id"): e for e in events if e.get("kind") == "verdict" and e.get("op") == op}
    candidates = _candidate_rows(proposed, verdicts)
    best = o.get("best") or None
    bound = _bound(op)
    return {
        "op": op, "bound": bound, "tried": o.get("candidates", 0), "accepted": o.get("accepted", 0),
        "failures": dict(sorted((o.get("failures") or {}).items())),
        "promoted": bool(o.get("promoted")), "promotion": o.get("promotion"),
        "best": best, "rate": rate_text(op, best) if best else "—",
        "ceiling": ceilings.get("matmul_tflops" if bound == "compute" else "copy_gbps"),
        "candidates": candidates,
        "winner": _winner(folder, op, best, candidates) if best else None,
        "rules": _rules(op, o, events),
    }


def _candidate_rows(proposed: list[dict], verdicts: dict[str, dict]) -> list[dict]:
    """Candidates in the order they were proposed, with their verdict and the best ×compile so far."""
    rows, best_id, best_value = [], None, None
    for number, event in enumerate(proposed, 1):
        verdict = verdicts.get(event.get("id")) or {}
        status = verdict.get("status", "not judged")
        # a rejected candidate's numbers are not speeds (too_fast is a cheat): only accepted ones are shown
        timing = (verdict.get("timing") or {}) if status == "accepted" else {}
        failure = verdict.get("failure") or {}
        own = finite_number(timing.get("speedup_compile"))
        if own is not None and (best_value is None or own > best_value):
            best_id, best_value = event.get("id"), own
        rows.append({
            "number": number, "id": event.get("id"), "origin": event.get("origin"),
            "parents": list(event.get("parents") or []), "status": status,
            "failure_class": failure.get("class"), "failure_detail": failure.get("detail"),
            "speedup_eager": finite_number(timing.get("speedup_eager")), "speedup_compile": own,
            "roofline_fraction": finite_number(timing.get("roofline_fraction")),
            "best_so_far": best_id, "best_compile_so_far": best_value,
        })
    return rows


def _source(folder: RunFolder, op: str, candidate_id: str) -> str | None:
    # ids come from the run folder: only a plain file name may reach the file system
    if not (SAFE_NAME.fullmatch(str(op)) and SAFE_NAME.fullmatch(str(candidate_id))):
        return None
    path = folder.candidate_path(op, candidate_id)
    return path.read_text(errors="replace") if path.is_file() else None


def _winner(folder: RunFolder, op: str, best: dict, candidates: list[dict]) -> dict:
    """The run's best for the op: its lineage back through first parents, its source, and its diff."""
    by_id = {c["id"]: c for c in candidates}
    lineage, seen, current = [], set(), best.get("candidate")
    while current is not None and current not in seen:  # a cycle in hostile events ends the walk
        seen.add(current)
        row = by_id.get(current)  # a parent from before this run (the incumbent's) has no event here
        lineage.append(row or {"id": current, "origin": "not in this run", "status": "—", "speedup_compile": None})
        current = row["parents"][0] if row and row["parents"] else None
    source = _source(folder, op, best.get("candidate"))
    parent = lineage[1]["id"] if len(lineage) > 1 else None
    parent_source = _source(folder, op, parent) if parent else None
    diff = None
    if source is not None and parent_source is not None:
        diff = "".join(difflib.unified_diff(parent_source.splitlines(keepends=True), source.splitlines(keepends=True),
                                            fromfile=f"{parent}.py", tofile=f"{best.get('candidate')}.py"))
    return {"id": best.get("candidate"), "origin": best.get("origin"), "lineage": lineage, "source": source,
            "parent": parent, "diff": diff}


def _rules(op: str, o: dict, events: list[dict]) -> list[dict]:
    """Rules tested (confirmed, refuted, inconclusive) and rules learned by reflection, with their effect."""
    tested = o.get("lessons") or [e for e in events if e.get("kind") == "lesson" and e.get("op") == op]
    rows = [{"op": op, "rule": t.get("rule"), "verdict": t.get("verdict"), "effect": t.get("effect"),
             "recorded": "yes" if t.get("recorded") else "no"} for t in tested]
    learned = o.get("reflections") or [e for e in events if e.get("kind") == "reflection" and e.get("op") == op
                                       and e.get("rule")]
    for r in learned:
        confidence = finite_number(r.get("confidence"))
        said = f" (confidence {confidence:.2f})" if confidence is not None else ""
        rows.append({"op": op, "rule": r.get("rule"), "verdict": "learned", "effect": f"{r.get('statement', '')}{said}",
                     "recorded": "yes" if r.get("path") else "no"})
    for e in events:  # a lesson the reflector proposed and the checks refused: said, never learned
        if e.get("kind") == "reflection" and e.get("op") == op and e.get("error"):
            rows.append({"op": op, "rule": "—", "verdict": "not learned", "effect": e["error"], "recorded": "no"})
    return rows


def _llm_report(summary: dict) -> dict | None:
    llm = summary.get("llm")
    if not llm:
        return None
    usage = [("run", llm)] + [(op, o["llm"]) for op, o in (summary.get("ops") or {}).items() if o.get("llm")]
    keys = ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "cost")
    return {"lines": [line.strip() for line in llm_lines(summary)],
            "usage": [{"scope": scope, **{k: u.get(k) for k in keys}} for scope, u in usage]}


def _model_report(summary: dict) -> dict | None:
    model = summary.get("model")
    if not model:
        return None
    conv = model.get("convergence") or {}
    try:
        lines = model_lines({"model": model})
    except (KeyError, TypeError, ValueError):  # a build record of another version
        lines = [f"NanoGPT build: {'passed' if model.get('passed') else 'FAILED'} on {model.get('device', '?')}"]
    steps = conv.get("logged") if isinstance(conv.get("logged"), list) else []
    steps = steps if all(finite_number(s) is not None for s in steps) else []  # a curve is drawn against numbers only
    # every curve has one value (or None) per logged step, so charts and tables index them alike
    curves = {name: [finite_number(v) for v in conv[name][:len(steps)]] + [None] * (len(steps) - len(conv[name]))
              for name in ("torch", "triton", "torch_repeat") if isinstance(conv.get(name), list)}
    curves = {name: curve for name, curve in curves.items() if any(v is not None for v in curve)}
    convergence = {"logged": steps, "curves": curves} if len(steps) > 1 and curves else None
    bench = [{"name": name, "gpu": b.get("gpu"), "torch": b.get("torch"), "rows": list(b.get("rows") or [])}
             for name, b in (model.get("bench") or {}).items()]
    return {"lines": [line.strip() for line in lines], "convergence": convergence, "bench": bench}


# ----------------------------------------------------------------------------- the report as blocks

def _heading(level: int, text: str) -> Block:
    return {"type": "heading", "level": level, "text": text}


def _para(text: str) -> Block:
    return {"type": "para", "text": text}


def _table(name: str, headers: list[str], rows: list[list[Any]], caption: str = "") -> Block:
    return {"type": "table", "name": name, "headers": headers, "rows": [[str(c) for c in r] for r in rows],
            "caption": caption}


def _failures_text(failures: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in failures.items()) or "—"


def _backward_text(best: dict) -> str:
    return {True: "deterministic", False: "atomics"}.get(best.get("deterministic"), "checked")


def _peak(best: dict) -> Any:
    peak = best.get("train_peak_mib")
    return peak.get("candidate") if isinstance(peak, dict) else None


def _us(ms: Any) -> float | None:
    value = finite_number(ms)
    return None if value is None else value * 1e3


def _best_cells(best: dict) -> list[str]:
    """best, ×eager, ×compile, roofline: the cells the terminal report shows for an op's best."""
    name = f"{best.get('candidate', '—')} {best.get('origin') or ''}".strip()
    return [name, ratio_text(best.get("speedup_eager")), ratio_text(best.get("speedup_compile")),
            percent_text(best.get("roofline_fraction"))]


def document(report: dict) -> list[Block]:
    run, device, timed = report["run"], report["device"], report["timed"]
    ceilings = device["ceilings"]
    blocks = [_heading(1, f"Run {run['run_id']}"),
              _para(f"target {run['target']} · {run['status']} · started {run['started']} · finished "
                    f"{run['finished'] or '—'}"),
              _heading(2, "Device and versions"),
              _table("device", ["device", "arch", "torch", "triton", "copy ceiling", "matmul ceiling"],
                     [[device["name"], device["arch"], device["torch"], device["triton"],
                       number_text(ceilings.get("copy_gbps"), ",.0f", " GB/s"),
                       number_text(ceilings.get("matmul_tflops"), ",.0f", " TFLOP/s")]]),
              _heading(2, "Summary"),
              _table("ops", ["op", "candidates", "accepted", "best", "×eager", "×compile", "roofline", "rate",
                             "failures", "promoted"],
                     [[o["op"], o["tried"], o["accepted"], *_best_cells(o["best"] or {}), o["rate"],
                       _failures_text(o["failures"]), "yes" if o["promoted"] else "no"] for o in report["ops"]],
                     "×eager, ×compile: the best's speedup over PyTorch eager and torch.compile, same process."
                     if timed else NOT_MEASURED)]
    trained = [o for o in report["ops"] if (o["best"] or {}).get("backward")]
    if trained:
        blocks += [_heading(2, "Training kernels"),
                   _table("backward", ["op", "backward", "f+b ×eager", "f+b ×compile", "f+b time", "peak MiB"],
                          [[o["op"], _backward_text(o["best"]), ratio_text(o["best"].get("train_speedup_eager")),
                            ratio_text(o["best"].get("train_speedup_compile")),
                            number_text(_us(o["best"].get("train_candidate_ms")), ",.1f", " µs"),
                            number_text(_peak(o["best"]), ",.0f")]
                           for o in trained],
                          "The best's forward and backward together (every floating input's gradient checked "
                          "against autograd of the reference), against PyTorch eager and torch.compile of both.")]
    blocks += [_heading(2, "Failures by class"), _table("failures", ["op", "class", "count"], [
                   [o["op"], k, v] for o in report["ops"] for k, v in o["failures"].items()]),
               _heading(2, "Rules"),
               _table("rules", ["op", "rule", "verdict", "effect", "recorded"],
                      [[r["op"], r["rule"], r["verdict"], r["effect"], r["recorded"]]
                       for o in report["ops"] for r in o["rules"]])]
    if report["llm"]:
        blocks += [_heading(2, "LLM usage"), *map(_para, report["llm"]["lines"]),
                   _table("llm", ["scope", "calls", "without an answer", "prompt tokens", "completion tokens", "cost"],
                          [[u["scope"], u["calls"], u["failed_calls"] or 0, number_text(u["prompt_tokens"], ",.0f"),
                            number_text(u["completion_tokens"], ",.0f"), number_text(u["cost"], ".4f")]
                           for u in report["llm"]["usage"]])]
    for o in report["ops"]:
        blocks += _op_blocks(o, timed)
    if report["model"]:
        blocks += _model_blocks(report["model"])
    return blocks


def _op_blocks(o: dict, timed: bool) -> list[Block]:
    op = o["op"]
    blocks = [_heading(2, op)]
    points = [c for c in o["candidates"] if c["speedup_compile"] is not None]
    if not timed:
        blocks.append(_para(NOT_MEASURED))
    elif not points:
        blocks.append(_para("No accepted candidate was timed for this op."))
    else:
        blocks.append({"type": "chart", "kind": "step", "name": f"speedup-{op}",
                       "title": f"{op}: best speedup over torch.compile so far", "candidates": o["candidates"]})
        ceiling = "matmul TFLOP/s" if o["bound"] == "compute" else "copy bandwidth"
        bars = [(c["id"], c["roofline_fraction"]) for c in points if c["roofline_fraction"] is not None]
        blocks.append({"type": "chart", "kind": "bars", "name": f"roofline-{op}", "bars": bars,
                       "title": f"{op}: fraction of the measured {ceiling}", "winner": (o["winner"] or {}).get("id")})
    blocks.append(_table(f"candidates-{op}", ["#", "id", "origin", "parents", "status", "×eager", "×compile",
                                              "roofline", "best so far", "failure"],
                         [[c["number"], c["id"], c["origin"], ", ".join(map(str, c["parents"])) or "—", c["status"],
                           ratio_text(c["speedup_eager"]), ratio_text(c["speedup_compile"]),
                           percent_text(c["roofline_fraction"]),
                           f"{c['best_so_far']} {ratio_text(c['best_compile_so_far'])}" if c["best_so_far"] else "—",
                           f"{c['failure_class']}: {c['failure_detail']}" if c["failure_class"] else "—"]
                          for c in o["candidates"]]))
    if o["promotion"]:
        blocks.append(_para(f"promotion: {'promoted' if o['promoted'] else 'not promoted'}, {o['promotion']}"))
    winner = o["winner"]
    if winner is None:
        return blocks + [_para("No accepted candidate.")]
    _, eager, compiled, roofline = _best_cells(o["best"])
    unit = "TFLOP/s" if o["bound"] == "compute" else "GB/s"
    against = f" of {number_text(o['ceiling'], ',.0f')} {unit} measured" if finite_number(o["ceiling"]) else ""
    blocks.append(_heading(3, f"winner {winner['id']} ({winner['origin'] or 'origin not recorded'})"))
    if finite_number(o["best"].get("speedup_eager")) is None:
        blocks.append(_para(f"speed not measured ({o['bound']}-bound op)"))
    else:
        blocks.append(_para(f"{eager} eager, {compiled} torch.compile, roofline {roofline} "
                            f"({o['rate']}{against}, {o['bound']}-bound)"))
    blocks.append(_table(f"lineage-{op}", ["generation", "id", "origin", "status", "×compile"],
                         [[i, step["id"], step["origin"], step["status"], ratio_text(step["speedup_compile"])]
                          for i, step in enumerate(winner["lineage"])],
                         "the winner first, then each first parent back to the root"))
    if winner["diff"] is not None:
        blocks.append({"type": "code", "lang": "diff", "name": f"diff-{op}", "open": True, "text": winner["diff"]
                       or "(same source)", "title": f"diff {winner['parent']} → {winner['id']}"})
    if winner["source"] is not None:
        blocks.append({"type": "code", "lang": "python", "name": f"source-{op}", "open": False,
                       "title": f"source of {winner['id']} ({len(winner['source'].splitlines())} lines)",
                       "text": winner["source"]})
    return blocks


def _model_blocks(model: dict) -> list[Block]:
    blocks = [_heading(2, "NanoGPT build"), {"type": "list", "items": model["lines"]}]
    conv = model["convergence"]
    if conv:
        blocks.append({"type": "chart", "kind": "lines", "name": "loss", "title": "training loss, both backends",
                       "x": conv["logged"], "curves": conv["curves"]})
    for b in model["bench"]:
        blocks.append(_table(f"bench-{b['name']}", ["kind", "variant", "batch×seq", "ms", "tokens/s", "peak MiB",
                                                     "×eager", "×compile", "×reduce-overhead"],
                             [[r.get("kind"), r.get("label") or r.get("variant"), f"{r.get('batch')}×{r.get('seq')}",
                               number_text(r.get("ms"), ".3f") if finite_number(r.get("ms")) else f"failed: {r.get('error')}",
                               number_text(r.get("tokens_per_s"), ",.0f"), number_text(r.get("peak_mib"), ",.0f"),
                               *(ratio_text(r.get(k)) for k in ("vs_eager", "vs_compile", "vs_reduce_overhead"))]
                              for r in b["rows"]],
                             f"model bench {b['name']} on {b['gpu']}, torch {b['torch']}"))
    return blocks


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1d232a;margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:1px solid #d8dee4;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d8dee4;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f5f7}
caption{caption-side:bottom;text-align:left;color:#57606a;font-size:12px;padding-top:4px}
pre{background:#f6f8fa;border:1px solid #d8dee4;padding:8px;overflow:auto;max-height:520px;font-size:12px}
summary{cursor:pointer;color:#0b57d0}.add{color:#116329;background:#e6ffec}.del{color:#82071e;background:#ffebe9}
.hunk{color:#6639ba}svg.chart{display:block;margin:8px 0}.plot{fill:#fbfcfd;stroke:#d8dee4}.grid{stroke:#e6e9ec}
.parity{stroke:#9aa4ae;stroke-dasharray:4 3}.title{font-size:13px;font-weight:600;fill:#1d232a}
.label,.tick{font-size:11px;fill:#57606a}.series{fill:none;stroke-width:2}.best{stroke:#0b57d0}
.marker{fill:#0b57d0;stroke:#fff}.marker.failed{stroke:#cf222e;stroke-width:2;fill:none}.marker.rejected{fill:#cf222e}
.bar{fill:#8fb3ea}.bar.winner{fill:#0b57d0}.s0{stroke:#0b57d0;fill:#0b57d0}.s1{stroke:#e8710a;fill:#e8710a}
.s2{stroke:#9aa4ae;fill:#9aa4ae;stroke-dasharray:5 3}path.s0,path.s1,path.s2{fill:none}
"""
# nothing may load or run, even from text that escaped the escaping
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _html_block(block: Block) -> str:
    e = html.escape
    kind = block["type"]
    if kind == "heading":
        return f"<h{block['level']}>{e(block['text'])}</h{block['level']}>"
    if kind == "para":
        return f"<p>{e(block['text'])}</p>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{e(item)}</li>" for item in block["items"]) + "</ul>"
    if kind == "table":
        caption = f"<caption>{e(block['caption'])}</caption>" if block["caption"] else ""
        head = "".join(f"<th>{e(h)}</th>" for h in block["headers"])
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block["rows"])
        if not block["rows"]:
            body = f'<tr><td colspan="{len(block["headers"])}">none</td></tr>'
        return (f'<table data-table="{e(block["name"])}">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")
    if kind == "chart":
        return {"step": step_chart, "bars": bar_chart, "lines": line_chart}[block["kind"]](block)
    lines = block["text"].splitlines()
    if block["lang"] == "diff":  # colour by the line's first character
        style = lambda line: ("hunk" if line.startswith("@@") else "add" if line.startswith("+")
                              else "del" if line.startswith("-") else "")
        body = "\n".join(f'<span class="{style(x)}">{e(x)}</span>' if style(x) else e(x) for x in lines)
    else:
        body = e(block["text"])
    opened = " open" if block["open"] else ""
    return (f'<details data-code="{e(block["name"])}"{opened}><summary>{e(block["title"])}</summary>'
            f"<pre>{body}</pre></details>")


def render_html(report: dict) -> str:
    title = f"evolve run {report['run']['run_id']}"
    body = "\n".join(_html_block(b) for b in document(report))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_html(folder: RunFolder) -> Path:
    out = folder.path / "report.html"
    out.write_text(render_html(build_report(folder)), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- markdown

def _md_text(text: Any) -> str:
    # GitHub renders inline HTML: the same hostile text is escaped here as on the page
    return html.escape(str(text), quote=False).replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    cell = lambda c: _md_text(c).replace("|", "\\|") or " "
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _md_chart(block: Block) -> str:
    """A chart as the table of the numbers it draws."""
    if block["kind"] == "step":
        rows = [[r["number"], r["id"], r["status"], ratio_text(r["speedup_compile"]),
                 ratio_text(r["best_compile_so_far"])] for r in block["candidates"]]
        table = _md_table(["#", "id", "status", "×compile", "best ×compile so far"], rows)
    elif block["kind"] == "bars":
        table = _md_table(["candidate", "fraction of the roofline"],
                          [[cid, percent_text(f)] for cid, f in block["bars"]])
    else:
        curves = block["curves"]
        table = _md_table(["step", *curves], [[s, *("—" if c[i] is None else f"{c[i]:.4f}" for c in curves.values())]
                                              for i, s in enumerate(block["x"])])
    return f"*{_md_text(block['title'])}*\n\n{table}"


def _md_block(block: Block) -> str:
    kind = block["type"]
    if kind == "heading":
        return "#" * block["level"] + " " + _md_text(block["text"])
    if kind == "para":
        return _md_text(block["text"])
    if kind == "list":
        return "\n".join(f"- {_md_text(item)}" for item in block["items"])
    if kind == "table":
        table = _md_table(block["headers"], block["rows"]) if block["rows"] else "none"
        return table + (f"\n\n*{_md_text(block['caption'])}*" if block["caption"] else "")
    if kind == "chart":
        return _md_chart(block)
    # a fence longer than any run of backticks in the text, so the text cannot close it
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", block["text"])), default=0) + 1)
    return f"**{_md_text(block['title'])}**\n\n{fence}{block['lang']}\n{block['text'].rstrip(chr(10))}\n{fence}"


def markdown_report(folder: RunFolder) -> str:
    return "\n\n".join(_md_block(b) for b in document(build_report(folder))) + "\n"


def write_markdown(folder: RunFolder) -> Path:
    out = folder.path / "report.md"
    out.write_text(markdown_report(folder), encoding="utf-8")
    return out

