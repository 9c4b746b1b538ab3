"""The GPU benchmark suite: every bundle against nnU-Net v2 on the same weights, inside one time budget.

One phase per bundle (``--model``, then the ``--arch`` random-weight network), each a
:func:`benchmarks.compare.compare` run over the same cases. The budget left is shared evenly by the
phases still to run (``--deadline``), so a slow phase cannot starve the next one of its first repeat.
The suite report ``<results>/<name>.md|.json`` is rewritten after every run, and each phase's per-case
table is printed on stdout as the phase ends; Ctrl-C or SIGTERM stop the suite with everything that
finished reported.

    python -m benchmarks.gpu.suite --work /tmp/pancreas-bench --results $OUT --name gpu-20260101 \\
        --model pancreas/demo_bundle --arch nnunet --cases crop full111 full300 --budget-s 420
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import CompareConfig, compare
from benchmarks.gpu.archs import ARCHS, arch_bundle
from benchmarks.gpu.cases import CASES, write_cases
from benchmarks.machine import machine_info, machine_line
from benchmarks.report import stage_table, summary_table, write_text_atomic

logger = logging.getLogger(__name__)

#: seconds kept back from the budget for the last reports
RESERVE_S = 10.0


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """Options of :func:`run_suite`."""

    work: str
    results: str
    name: str
    models: tuple[str, ...]
    arch: str = "nnunet"  # key of ARCHS, or "none"
    cases: tuple[str, ...] = ("crop", "full111", "full300")
    repeats: int = 3
    baseline_repeats: int = 1
    candidates: tuple[str, ...] = ()
    deadline: float | None = None  # time.time() by which everything must be written
    timeout_s: float = 600.0  # per run
    command: str = ""


class Suite:
    """Runs the phases and keeps ``<results>/<name>.md|.json`` up to date."""

    def __init__(self, cfg: SuiteConfig) -> None:
        self.cfg = cfg
        self.results = Path(cfg.results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.phases: dict[str, dict[str, Any]] = {}
        self.machine = machine_info()
        self.notes: list[str] = []

    def bundles(self) -> list[tuple[str, str]]:
        """(phase name, bundle folder) in run order: the given bundles, then the random-weight network."""
        out = [(Path(m).name, m) for m in self.cfg.models]
        if self.cfg.arch != "none":
            root = Path(self.cfg.work) / f"arch-{self.cfg.arch}"
            out.append((f"arch-{self.cfg.arch}", str(arch_bundle(root, self.cfg.arch).root)))
        return out

    def phase_deadline(self, left_phases: int) -> float | None:
        if self.cfg.deadline is None:
            return None
        now = time.time()
        return now + max(0.0, self.cfg.deadline - RESERVE_S - now) / left_phases

    def update(self, phase: str, result: dict[str, Any]) -> None:
        self.phases[phase] = result
        self.write()

    def write(self) -> None:
        doc = {"config": dataclasses.asdict(self.cfg), "machine": self.machine, "notes": self.notes,
               "phases": self.phases}
        write_text_atomic(self.results / f"{self.cfg.name}.json", json.dumps(doc, indent=2, default=str))
        write_text_atomic(self.results / f"{self.cfg.name}.md", self.markdown())

    def markdown(self) -> str:
        from benchmarks.report import case_table

        cfg = self.cfg
        lines = [f"# GPU benchmark: our engine vs nnU-Net v2's predictor ({cfg.name})", "",
                 f"- machine: {machine_line(self.machine)}; {self.machine['os']}; python {self.machine['python']}",
                 f"- versions: {', '.join(f'{k} {v}' for k, v in self.machine['versions'].items())}",
                 f"- cases: {', '.join(f'{n} {chr(215).join(map(str, CASES[n].shape))} at {CASES[n].spacing} mm' for n in cfg.cases)}",
                 f"- repeats: {cfg.repeats} (nnU-Net: {cfg.baseline_repeats}); command: `{cfg.command}`",
                 *[f"- note: {n}" for n in self.notes], ""]
        for phase, res in self.phases.items():
            lines += [f"## {phase} (`{res['config']['bundles'][0]}`)", "", f"**{res['best_line']}**", "",
                      *summary_table(res), "", "Per case (seconds; stage groups comparable between nnU-Net and ours):",
                      "", *stage_table(res), "", "<details><summary>every stage</summary>", "", *case_table(res), "",
                      "</details>", ""]
            lines += [f"- {k['candidate']} on {k['case']}: {k['reason']}" for k in res.get("skipped", [])]
            lines += [f"- FAILED {f['candidate']} on {f['case']}: {f['error']}" for f in res["failures"]]
            lines += [f"- setup {n}: FAILED {s['error']}" for n, s in res["setup"].items() if not s["ok"]]
            setup = [f"{n} {s['load_s']:.1f}+{s['warmup_s']:.1f}" for n, s in res["setup"].items() if s["ok"]]
            lines += [f"- setup once per candidate (load + warm-up s, compile included): {', '.join(setup)}"]
            lines.append("")
        return "\n".join(lines)

    def run_phase(self, phase: str, bundle: str, cases: Path, left_phases: int) -> dict[str, Any]:
        cfg = self.cfg
        out = Path(cfg.work) / "out"
        ccfg = CompareConfig(bundles=(bundle,), cases=str(cases), out=str(out), repeats=cfg.repeats,
                             baseline_repeats=cfg.baseline_repeats, candidates=cfg.candidates,
                             name=f"{cfg.name}-{phase}", timeout_s=cfg.timeout_s, command=cfg.command,
                             deadline=self.phase_deadline(left_phases))
        result = compare(ccfg, on_update=lambda res: self.update(phase, res))
        png = Path(result["files"]["png"])
        if png.is_file():
            shutil.copyfile(png, self.results / png.name)
        self.update(phase, result)
        print_phase(phase, result)
        return result


def print_phase(phase: str, result: dict[str, Any]) -> None:
    """The phase's per-case table, summary and best line on stdout (the device run returns stdout's tail)."""
    lines = [f"## {phase}", *stage_table(result), "", *summary_table(result), result["best_line"], ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def run_suite(cfg: SuiteConfig) -> dict[str, dict[str, Any]]:
    """Write the cases, run one phase per bundle, return the phase results (also on SIGTERM / Ctrl-C)."""
    suite = Suite(cfg)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cases = Path(cfg.work) / ("cases-" + "-".join(cfg.cases))
        write_cases(cases, list(cfg.cases))
        phases = suite.bundles()
        for i, (phase, bundle) in enumerate(phases):
            result = suite.run_phase(phase, bundle, cases, len(phases) - i)
            if "_interrupted" in result["setup"]:
                suite.notes.append(f"interrupted during {phase}; later phases did not run")
                break
    except KeyboardInterrupt:
        suite.notes.append("interrupted before the phases finished")
        logger.warning("interrupted: writing what finished")
    finally:
        signal.signal(signal.SIGTERM, previous)
        suite.write()
    return suite.phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="scratch folder (cases, random bundle, per-phase outputs)")
    p.add_argument("--results", required=True, help="where <name>.md|.json and the charts go")
    p.add_argument("--name", required=True)
    p.add_argument("--model", action="append", default=[], help="bundle; one phase each")
    p.add_argument("--arch", default="nnunet", choices=[*ARCHS, "none"], help="random-weight network phase")
    p.add_argument("--cases", nargs="+", default=["crop", "full111", "full300"], choices=list(CASES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-repeats", type=int, default=1)
    p.add_argument("--candidates", nargs="*", default=[], metavar="GLOB")
    p.add_argument("--budget-s", type=float, help="seconds from now by which everything is written")
    p.add_argument("--deadline", type=float, help="the same as a time.time() value (wins over --budget-s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    deadline = args.deadline or (time.time() + args.budget_s if args.budget_s else None)
    cfg = SuiteConfig(work=args.work, results=args.results, name=args.name, models=tuple(args.model),
                      arch=args.arch, cases=tuple(args.cases), repeats=args.repeats,
                      baseline_repeats=args.baseline_repeats, candidates=tuple(args.candidates), deadline=deadline,
                      timeout_s=args.timeout, command="python -m benchmarks.gpu.suite " + " ".join(argv or sys.argv[1:]))
    phases = run_suite(cfg)
    if not phases:
        logger.error("no phase finished; see %s", Path(cfg.results) / f"{cfg.name}.md")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
