"""Execute the numbered notebooks with papermill and write reports/<name>.html plus reports/index.html.

Finished training runs are reused from the run cache (runs are keyed by their config hash), so a rerun only
trains what is missing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import time
from pathlib import Path
from unittest import mock

from scpo_lab.config import PROFILES

ROOT = Path(__file__).resolve().parent.parent


def notebook_paths(notebooks_dir: Path | None = None, names: list[str] | None = None) -> list[Path]:
    notebooks_dir = Path(notebooks_dir or ROOT / "notebooks")
    found = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if names:
        chosen = [p for p in found if p.stem in names or p.name in names]
        missing = set(names) - {p.stem for p in chosen} - {p.name for p in chosen}
        if missing:
            raise ValueError(f"notebooks: unknown {sorted(missing)}; available: {', '.join(p.stem for p in found)}")
        return chosen
    return found


def execute_notebook(path: Path, output_dir: Path, parameters: dict, kernel: str = "python3") -> Path:
    """Run one notebook with papermill (parameters injected after the 'parameters' cell); return the HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    executed = output_dir / "_executed" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(path), str(executed), parameters=parameters, kernel_name=kernel,
                               cwd=str(path.parent), progress_bar=False)
    body, _ = HTMLExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(
        nbformat.read(str(executed), as_version=4))
    out = output_dir / f"{path.stem}.html"
    out.write_text(body)
    return out


def build_reports(profile: str = "cpu", notebooks: list[str] | None = None, output_dir: str | Path = "reports",
                  notebooks_dir: Path | None = None) -> Path:
    if profile not in PROFILES:
        raise ValueError(f"profile: unknown {profile!r}; allowed: {', '.join(PROFILES)}")
    from scpo_lab import precision
    from scpo_lab.runs import git_commit
    from scpo_lab.sizes import BF16_LARGER, REPORT_PRECISION_ENV, report_precision, runs_larger

    commit = git_commit()  # the code the reports are built from (rewritten reports/ do not count as changes)
    trained_in = report_precision(profile)  # here, before any notebook: a bad SCPO_LAB_REPORT_PRECISION stops it
    sized = None
    if trained_in:
        sized = (f"the larger bf16 runs ({', '.join(f'{k} {v}' for k, v in BF16_LARGER[profile].items())}, "
                 "sizes.BF16_LARGER)" if runs_larger(trained_in) else "the fp32 set's sizes")
        print(f"[reports] the {profile} runs train in {trained_in} on this host at {sized} "
              "(scpo_lab.sizes.report_precision)", flush=True)
        if trained_in == "bf16" and precision.resolve("auto", "cpu") == "fp32":
            why = ("this CPU has no bf16 instructions: bf16 runs in software (a GRPO step measured 2.4x slower)"
                   if precision.bf16_hardware() is None else
                   f"bf16 measured {precision.cached_bf16_speedup():.2f}x fp32's speed on this CPU (auto needs "
                   f"{precision.BF16_MIN_SPEEDUP}x)")
            print(f"[reports] warning: {why}; --precision auto picks fp32 here", flush=True)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # every notebook's kernel inherits the precision resolved once here, so no two notebooks can resolve it apart
    with mock.patch.dict(os.environ, {REPORT_PRECISION_ENV: trained_in}) if trained_in else contextlib.nullcontext():
        rows = _execute_all(notebook_paths(notebooks_dir, notebooks), output_dir, profile)
    index = output_dir / "index.html"
    index.write_text(_index_html(rows, profile, commit, trained_in, sized))
    failed = [r[0] for r in rows if r[2] != "ok"]
    if failed:
        raise RuntimeError(f"notebooks failed: {', '.join(failed)} (see {index})")
    return index


def _execute_all(paths, output_dir: Path, profile: str) -> list[tuple]:
    rows = []
    for path in paths:
        print(f"[reports] executing {path.name} (profile={profile}) ...", flush=True)
        start = time.perf_counter()
        status = "ok"
        try:
            html_path = execute_notebook(path, output_dir, {"profile": profile})
        except Exception as err:  # keep going: one failing notebook should not hide the others' reports
            detail = f"{err.ename}: {err.evalue}" if hasattr(err, "ename") else f"{type(err).__name__}: {err}"
            status = f"failed: {detail.splitlines()[0] if detail else type(err).__name__}"
            html_path = None
        seconds = time.perf_counter() - start
        print(f"[reports] {path.name}: {status} in {seconds:.0f} s", flush=True)
        executed = _read_executed(output_dir / "_executed" / path.name) if html_path else None
        trained = ", ".join(c[:12] for c in conclusion_record(executed).get("train_commits", []))
        rows.append((path.stem, html_path, status, seconds, headline(executed), trained))
    return rows


def _read_executed(executed):
    """An executed notebook (a path, or one already read) -> its nbformat node; None when there is none."""
    import nbformat

    if executed is None or isinstance(executed, nbformat.NotebookNode):
        return executed
    return nbformat.read(str(executed), as_version=4) if Path(executed).is_file() else None


def headline(executed, limit: int = 400) -> str:
    """An executed notebook's finding (a path or the notebook read): the headline its conclusion recorded
    (conclusions.Conclusion.show puts it in the output's metadata); for a notebook without one, the first line of
    its last Markdown output, the smoke-profile disclaimer skipped; "" if there is none."""
    nb = _read_executed(executed)
    if nb is None:
        return ""
    line = conclusion_record(nb).get("headline")
    if line:
        return line if len(line) <= limit else line[:limit - 1] + "…"
    texts = [out["data"]["text/markdown"] for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []) if "text/markdown" in out.get("data", {})]
    for text in reversed(texts[-1:]):
        for line in text.splitlines():
            line = line.strip().removeprefix("- ").strip()
            if line and "Smoke profile" not in line:
                return line if len(line) <= limit else line[:limit - 1] + "…"
    return ""


def conclusion_record(executed) -> dict:
    """The last {"headline", "train_commits"} record a conclusion left in an executed notebook's outputs (a path
    or the notebook read; {} if none)."""
    nb = _read_executed(executed)
    if nb is None:
        return {}
    records = [out.get("metadata", {}).get("scpo_lab") for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", [])]
    records = [r for r in records if isinstance(r, dict)]
    return records[-1] if records else {}


def _index_html(rows, profile: str, commit: str, trained_in: str | None = None, sized: str | None = None) -> str:
    items = "\n".join(
        f"<tr><td>{f'<a href={html.escape(p.name)!r}>{html.escape(name)}</a>' if p else html.escape(name)}</td>"
        f"<td>{html.escape(status)}</td><td>{seconds / 60:.1f} min</td><td>{html.escape(line)}</td>"
        f"<td><code>{html.escape(trained or '-')}</code></td></tr>"
        for name, p, status, seconds, line, trained in rows)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    precision = (f" Runs trained in <b>{html.escape(trained_in)}</b> at {html.escape(sized or '-')} (the report "
                 "precision on this host; held-out evaluations in fp32)." if trained_in else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>scpo_lab reports</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}td,th{{padding:.3em 1em;text-align:left;
vertical-align:top}}</style>
</head><body><h1>scpo_lab reports</h1><p>Profile <b>{html.escape(profile)}</b>, rendered {when} from git commit
<code>{html.escape(commit)}</code>; each row names the commits that trained its runs (a run is trained once and
then loaded from the run cache, so they can be older).{precision}</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>finding (by the rule of scpo_lab.conclusions)</th>
<th>runs trained at</th></tr>
{items}
</table></body></html>
"""
