"""Claims in README.md and the docs pages that a test can check against results/."""
from __future__ import annotations

import decimal
import json
import pathlib
import re
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = ROOT / "results"
RESULTS_PAGE = DOCS / "results.md"


def _python_blocks(path):
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _flat(path) -> str:
  return " ".join(path.read_text().split())


def test_distillation_example_loss_is_about_zero():
  # docs/pure-functions.md: `loss, per_layer = distill.membrane_kd_loss(taps_s, taps_t)  # ≈ 0:
  # decorrelation removes scale/offset` (the teacher is a per-channel affine image of the student).
  (block,) = [b for b in _python_blocks(DOCS / "pure-functions.md") if "taps_t = {" in b]
  assert "≈ 0" in block
  namespace = {}
  np.random.seed(0)  # the example's EMD line draws from NumPy's global generator
  exec(compile(block, "pure-functions.md distillation example", "exec"), namespace)
  loss = float(namespace["loss"])
  assert 0.0 <= loss < 1e-5, loss
  terms = {f"{layer}/{k}": float(v) for layer, d in namespace["per_layer"].items()
           for k, v in d.items()}
  assert terms and all(abs(v) < 1e-5 for v in terms.values()), terms
  # Without the decorrelation the same taps are far apart: the ≈ 0 is the normalisation's doing.
  raw = namespace["distill"].membrane_kd_loss(namespace["taps_s"], namespace["taps_t"],
                                              decorrelate=False)
  assert float(raw) > 1.0, float(raw)


def test_quickstart_numbers_are_the_recorded_run():
  q = json.loads((RESULTS / "quickstart.json").read_text())
  for page in (README, DOCS / "getting-started.md"):
    text = _flat(page)
    assert q["quickstart_command"] in text.replace("--workdir=/tmp/mdsnn_digits", "--workdir=<fresh workdir>")
    for run in q["runs"]:
      fp, md = run["stages"]["fp"], run["stages"]["md"]
      assert q["accuracy_unit"] == "percent"
      quoted = (f"FP {fp['test_accuracy']:.2f} %, PTQ {md['ptq_accuracy']:.2f} % and "
                f"MD student {md['test_accuracy']:.2f} %")
      assert quoted in text, (page.name, quoted)
    assert q["identical_across_runs"] and "identical in both runs" in text
    walls = " and ".join(f"{r['wall_seconds']:.0f} s" for r in q["runs"])
    assert f"{walls} of wall time" in text, (page.name, walls)
    assert f"commit `{q['provenance']['commit'][:7]}`" in text
    assert q["provenance"]["machine"]["cpu"] in text
  # The student described: full-precision first and last layers.
  sq = q["student_quantization"]
  assert sq["first_layer"] == sq["last_layer"] == {"kind": "none"}
  assert "first layer and its classifier keep full-precision weights" in _flat(README)


def test_md_statistics_quoted_are_the_recorded_ones():
  s = json.loads((RESULTS / "md_stats.json").read_text())
  ev = {k.split(",")[0]: v for k, v in s["evidence"].items()}
  text = _flat(RESULTS_PAGE)
  for key, v in ev.items():
    # The page's statistics table: Δ, seeds > 0, raw and Holm-adjusted p of every comparison.
    assert (f"{v['mean']:+.2f} ± {v['std']:.2f} | {v['positive']}/5 | "
            f"{v['p_t_one_sided']:.3f} | {v['p_t_holm']:.3f} |") in text, key
  assert all(v["p_t_holm"] >= 0.05 and v["p_wilcoxon_holm"] >= 0.05 for v in ev.values())
  assert "no comparison is significant at the 5 % level" in text
  nf = s["noise_floor"]
  assert (f"by up to {nf['max_abs_pp']:.2f} pp, and by {nf['mean_abs_pp']:.2f} pp on average"
          in text)
  a5 = s["all2"]["md vs none, seeds 0-4"]
  assert f"raw p = {a5['p_t_one_sided']:.3f}, Holm-adjusted {a5['p_t_holm']:.3f}" in text
  # The front page's numbers are md_evidence's (current), not the archive's.
  front = _flat(README) + " " + _flat(DOCS / "index.md")
  sym, full, vs_logit = ev["md_sym vs none_sym"], ev["md vs none"], ev["md vs logit"]
  for quoted in (f"+{sym['mean']:.2f} ± {sym['std']:.2f} pp over no KD on the symmetric 2-bit grid, "
                 f"ahead on {sym['positive']} of 5 seeds",
                 f"+{full['mean']:.2f} ± {full['std']:.2f} pp over no KD",
                 f"{vs_logit['mean']:.2f} ± {vs_logit['std']:.2f} pp".replace("-", "−")):
    assert front.count(quoted) >= 2, quoted
  assert "2.88" not in front and "27 %" not in front
  # The 750-step re-run, quoted on both front pages with its spread, from its own file.
  r750 = json.loads((RESULTS / "md_evidence_750" / "md_evidence_750.json").read_text())
  rows = {e["key"]: e for e in r750["datasets"][0]["rows"]}
  assert r750["provenance"]["command"].endswith("--config.train.steps=750 --seeds=0,1,2,3,4 "
                                                "--out=md_evidence_750")
  for key, name in (("logit", "logit KD"), ("md", "MD")):
    d = rows[key]["delta_vs_baseline"]
    quoted = f"{name} {d['mean']:+.2f} ± {d['std']:.2f} pp".replace("-", "−")
    assert front.count(quoted) == 2, quoted
    assert d["tests"]["p_t_holm"] >= 0.05
  assert front.count("750 steps, full grid, 5 seeds") == 2


def test_reproduce_tables_on_the_results_page_are_the_recorded_results():
  # docs/results.md quotes each results/tables/<table>.json through reproduce.render_summary,
  # verbatim: the numbers there are the files' numbers.
  from mdsnn_jax.train import reproduce

  text = RESULTS_PAGE.read_text()
  files = sorted((RESULTS / "tables").glob("*.json"))
  assert {f.stem for f in files} >= {"md_snn", "spquant", "emd", "feature_kd", "md_evidence"}, files
  for f in files:
    result = json.loads(f.read_text())
    assert result["scale"] == "cpu" and len(result["seeds"]) >= 3, (f, result["seeds"])
    assert reproduce.render_summary(result) in text, f"docs/results.md does not quote {f.name}"
    assert (f.with_suffix(".md")).read_text() == reproduce.render_markdown(result), f
  f = RESULTS / "md_cifar10_ablation" / "ablation_current.json"
  result = json.loads(f.read_text())
  assert result["table"] == "md_ablation" and result["scale"] == "config"
  assert reproduce.render_summary(result) in text
  assert f.with_suffix(".md").read_text() == reproduce.render_markdown(result)
  f = RESULTS / "md_evidence_750" / "md_evidence_750.json"
  result = json.loads(f.read_text())
  assert result["table"] == "md_evidence" and len(result["seeds"]) == 5
  assert reproduce.render_summary(result) in text
  assert f.with_suffix(".md").read_text() == reproduce.render_markdown(result)
  assert f.with_suffix(".csv").read_text() == reproduce.render_csv(result)


def test_archive_tables_are_their_files_and_come_after_the_current_ones():
  text = RESULTS_PAGE.read_text()
  archive = text.index("## Archive: superseded tables")
  assert text.index("## Current tables") < archive
  for rel in ("md_cifar10_all2/table_5seeds.md", "md_cifar10_all2/table.md",
              "md_cifar10_8bit/table.md", "md_cifar10_ablation/ablation.md",
              "md_cifar10_ablation/ablation_T1.md"):
    block = (RESULTS / rel).read_text().strip()
    assert text.find(block) > archive, rel
  for commit in ("815cd73", "bb0c7c7"):
    assert commit in text[archive:]


def test_longer_budget_result_is_quoted_from_its_commit():
  text = _flat(RESULTS_PAGE)
  assert "QAT alone 59.00 % against MD 56.59 %" in text and "bb0c7c7" in text
  assert "python launch/reproduce.py --table=md_evidence --rows=none,logit,md --workdir=runs/md750" in text
  r = subprocess.run(["git", "show", "bb0c7c7:results/md_cifar10_long/table.json"], cwd=ROOT,
                     capture_output=True, text=True)
  if r.returncode != 0:
    pytest.skip("git history with commit bb0c7c7 is not available (a shallow clone?)")
  rows = {row["method"]: row["accuracy"] for row in json.loads(r.stdout)["rows"]}
  assert (round(rows["none"][0], 2), round(rows["md"][0], 2)) == (59.00, 56.59)


# ----------------------------------------------------------------------------------------
# Every number in the docs' result and benchmark tables is in a results file.

_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?")


def _norm(token: str) -> str:
  t = token.replace(",", "").lstrip("+-−")
  if "." in t:
    t = t.rstrip("0").rstrip(".") or "0"
  return t


def _json_numbers(node, out):
  if isinstance(node, dict):
    for v in node.values():
      _json_numbers(v, out)
  elif isinstance(node, list):
    for v in node:
      _json_numbers(v, out)
  elif isinstance(node, (int, float)) and not isinstance(node, bool):
    for d in range(0, 5):
      out.add(_norm(f"{abs(node):.{d}f}"))


@pytest.fixture(scope="module")
def recorded_numbers():
  out = set()
  for f in RESULTS.rglob("*"):
    if f.suffix in (".md", ".csv", ".json") and f.is_file():
      text = f.read_text()
      out.update(_norm(t) for t in _NUMBER.findall(text))
      if f.suffix == ".json":
        _json_numbers(json.loads(text), out)
  return out


def _table_cells(path):
  for line in path.read_text().splitlines():
    if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip()):
      for cell in line.strip().strip("|").split("|"):
        yield line, cell


@pytest.mark.parametrize("page", ["results.md", "benchmarks.md"])
def test_every_table_number_is_in_a_results_file(page, recorded_numbers):
  missing = []
  for line, cell in _table_cells(DOCS / page):
    cell = re.sub(r"`[^`]*`", "", cell)  # code spans: row keys, flags
    for token in _NUMBER.findall(cell):
      if _norm(token) not in recorded_numbers:
        missing.append((token, line[:100]))
  assert not missing, missing[:20]


# ----------------------------------------------------------------------------------------
# BENCHMARKS.md and docs/benchmarks.md: every time stamp, load, date, CPU model, commit and
# command stated next to a results/bench file is that file's own provenance.

BENCHMARKS = ROOT / "BENCHMARKS.md"
_GIT_CITE = re.compile(r"git show ([0-9a-f]{7,40}):(results/bench/[\w/.{},-]+)")
_CITE = re.compile(r"results/bench/([\w/{},.-]+)")
_NOT_RECORDED_YET = {"gpu_suite"}  # the GPU suite's output path, described, not yet written
_LOAD = re.compile(r"\bload(?: average)?(?: \(1 min\))?\s+(?:≈\s*)?"
                   r"((?:\d+(?:\.\d+)?(?:\s*(?:/|,|and|before|after)\s*)*)+)")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
_HHMM = re.compile(r"(?<![\d:])(\d\d:\d\d)(?![\d:])")
_DATE = re.compile(r"(?<![\d-])(20\d\d-\d\d-\d\d)(?!T)")
_COMMIT = re.compile(r"\b(?:commit|code(?: of commit)?)\s+`([0-9a-f]{7,40})(\+dirty)?`")
_COMMAND = re.compile(r"`((?:[A-Z_]+=\S+\s+)*python (bench/\w+\.py)[^`]*)`")


def _expand(spec: str) -> list[str]:
  m = re.search(r"\{([^{}]*)\}", spec)
  if not m:
    return [spec]
  return [x for alt in m.group(1).split(",")
          for x in _expand(spec[:m.start()] + alt + spec[m.end():])]


def _units(text: str):
  """Paragraphs, with every list item and table row a unit of its own."""
  for block in re.split(r"\n\s*\n", text):
    unit = []
    for line in block.splitlines():
      if line.lstrip().startswith(("- ", "|")) and unit:
        yield " ".join(" ".join(unit).split())
        unit = []
      unit.append(line)
    if unit:
      yield " ".join(" ".join(unit).split())


def _record(stem: str, commit: str | None):
  """(provenance, .md text, load figures, numbers) of results/bench/<stem>, now or as
  committed in `commit`; None when that commit is not in the git history here."""
  def read(suffix):
    rel = f"results/bench/{stem}{suffix}"
    if commit is None:
      return (ROOT / rel).read_text()
    r = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, capture_output=True,
                       text=True)
    return r.stdout if r.returncode == 0 else None
  js, md = read(".json"), read(".md")
  if js is None or md is None:
    return None
  data = json.loads(js)
  loads = set()

  def walk(node, key=""):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, k)
    elif isinstance(node, list):
      for v in node:
        walk(v, key)
    elif isinstance(node, (int, float)) and "load" in key:
      loads.add(f"{node:.2f}")
  walk(data)
  for line in md.splitlines():
    if "load" in line:  # not the versions on the same line (jax 0.10.2)
      loads.update(re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])", line))
  numbers = set()
  for t in _NUMBER.findall(md):  # as written, and rounded (half up) to fewer decimals
    v = decimal.Decimal(t.replace(",", "").lstrip("+-−"))
    numbers.update(_norm(str(v.quantize(decimal.Decimal(1).scaleb(-d), decimal.ROUND_HALF_UP)))
                   for d in range(max(0, -v.as_tuple().exponent) + 1))
  _json_numbers(data, numbers)
  return data["provenance"], md, loads, numbers


def _cited(unit: str, bad: list):
  """The records of the results files a unit cites, and whether a git-history one was
  unavailable."""
  cited, skipped = [], False
  for commit, path in _GIT_CITE.findall(unit):
    for p in _expand(path.rstrip(".,;:)")):
      rec = _record(re.sub(r"\.(md|json|csv)$", "", p[len("results/bench/"):]), commit)
      skipped |= rec is None
      cited += [rec] if rec else []
  for path in _CITE.findall(_GIT_CITE.sub("", unit)):
    for p in _expand(path.rstrip(".,;:)")):
      stem = re.sub(r"\.(md|json|csv)$", "", p).rstrip("/")
      if stem in _NOT_RECORDED_YET or (RESULTS / "bench" / stem).is_dir():
        continue
      if not (RESULTS / "bench" / f"{stem}.json").is_file():
        bad.append(("cites a missing results file", p, unit[:120]))
        continue
      cited.append(_record(stem, None))
  return cited, skipped


def _provenance_mismatches(text: str) -> list:
  bad = []
  for unit in _units(text):
    cited, skipped = _cited(unit, bad)
    if skipped and not cited:
      continue  # only git-history citations, and no git history here
    provs = [c[0] for c in cited]
    times = {p["date"][11:16] for p in provs}
    loads = set().union(*(c[2] for c in cited)) if cited else set()
    body = _ISO.sub(lambda m: "" if m.group(0) in {p["date"] for p in provs} else "BAD-ISO",
                    unit)
    if "BAD-ISO" in body:
      bad.append(("ISO time stamp not in the cited files", unit[:120]))
    for t in _HHMM.findall(body):
      if t not in times:
        bad.append(("time", t, sorted(times), unit[:120]))
    for m in _LOAD.finditer(body):
      for x in re.findall(r"\d+(?:\.\d+)?", m.group(1)):
        if x not in loads:
          bad.append(("load", x, sorted(loads), unit[:120]))
    if not cited:
      continue
    dates = {p["date"][:10] for p in provs}
    for d in _DATE.findall(body):
      if d not in dates:
        bad.append(("date", d, sorted(dates), unit[:120]))
    cpus = " ".join(p["machine"]["cpu"] for p in provs)
    for model in ("EPYC", "Xeon"):
      if model in unit and model not in cpus:
        bad.append(("CPU model", model, cpus, unit[:120]))
    for h, dirty in _COMMIT.findall(unit):
      match = [p for p in provs if p["commit"].startswith(h)]
      if not match:
        bad.append(("commit", h, [p["commit"][:10] for p in provs], unit[:120]))
      elif (any(p.get("dirty") for p in match) and not dirty
            and "uncommitted" not in unit and f"{h[:10]}+dirty" not in unit):
        bad.append(("commit had uncommitted changes", h, unit[:120]))
    commands = {p["command"] for p in provs}
    scripts = {c.split()[0] for c in commands}
    for full, script in _COMMAND.findall(unit):
      if script not in scripts:
        continue
      for cmd in _expand(full):
        cmd = re.sub(r"^(?:[A-Z_]+=\S+\s+)*python\s+", "", cmd)
        if cmd not in commands:
          bad.append(("command", cmd, sorted(commands), unit[:120]))
  return bad


def _table_mismatches(text: str) -> list:
  """Every number in a table is in a results file cited in the table's section (rounded
  from it), or a ratio (N×) of two numbers of its own row; targets (≥ / ≤) aside. The table
  of what was tried is exempt: it says which of its numbers were not kept."""
  bad = []
  for section in re.split(r"\n(?=#{2,3} )", text):
    records, skipped = [], False
    for unit in _units(section):
      cited, skip = _cited(unit, bad)
      records += cited
      skipped |= skip
    numbers = set().union(*(r[3] for r in records)) if records else set()
    header = None
    for line in section.splitlines():
      if not line.startswith("|") or re.fullmatch(r"\|[-| :]+\|", line.strip()):
        header = None if not line.startswith("|") else header
        continue
      if header is None:
        header = line
        continue
      if header.startswith("| change |") or (skipped and not records):
        continue
      cells = [re.sub(r"`[^`]*`", "", c) for c in line.strip().strip("|").split("|")]
      own = [float(_norm(t)) for c in cells for t in _NUMBER.findall(c)]
      for cell in cells:
        if cell.strip().startswith(("≥", "≤")):
          continue
        for m in _NUMBER.finditer(cell):
          tok = _norm(m.group(0))
          if tok in numbers:
            continue
          digits = len(tok.split(".")[1]) if "." in tok else 0
          if cell[m.end():].lstrip().startswith("×") and any(
              b and f"{a / b:.{digits}f}" == f"{float(tok):.{digits}f}" for a in own for b in own):
            continue
          bad.append((m.group(0), line[:100]))
  return bad


@pytest.mark.parametrize("page", [BENCHMARKS, DOCS / "benchmarks.md"], ids=lambda p: p.name)
def test_benchmark_provenance_is_the_cited_files(page):
  text = page.read_text()
  bad = _provenance_mismatches(text)
  assert not bad, bad[:10]
  bad = _table_mismatches(text)
  assert not bad, bad[:10]


def test_no_internal_references_in_readme_and_docs():
  for page in [README, *sorted(DOCS.glob("*.md"))]:
    text = page.read_text()
    for pattern in (r"\bthe issue\b", r"\bissue #?\d", r"\bSPEC\b", r"technical reference"):
      assert not re.search(pattern, text, flags=re.I), (page.name, pattern)
