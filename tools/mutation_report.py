"""Per-module mutation score from mutmut 3's results in mutants/ (written by `make mutation`).

    python tools/mutation_report.py                      # every mutated module
    python tools/mutation_report.py optim data           # some modules
    python tools/mutation_report.py data --functions augment train_batches eval_batches to_float
    python tools/mutation_report.py optim --survivors    # also list the surviving mutants

mutmut prints one total for the whole run; this prints killed / survived / timed out per module.
Score = (killed + timed out) / checked, where "checked" leaves out mutants not run this time and
mutants whose function no selected test reaches ("no tests", listed separately: no test at all is
worse than a survivor). Mutants named in tests/mutation_equivalents.md (reviewed: no observable
change) are counted apart from the unexplained survivors.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit-code -> verdict table (mutmut/stats.py), kept here so the report also reads results
# from a machine without mutmut. Anything else is "suspicious".
STATUS_BY_EXIT_CODE = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 2: "interrupted",
    None: "not checked", 34: "skipped", 35: "suspicious", 36: "timeout", 37: "type check",
    -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
}
COLUMNS = ("killed", "timeout", "survived", "equivalent", "no tests", "other", "not checked")
MUTANT_NAME = re.compile(r"`(perceiver_edu\.[^`\s]+__mutmut_\d+)`")


def function_of(mutant: str) -> str:
    """perceiver_edu.optim.xǁLambǁstep__mutmut_3 -> Lamb.step; perceiver_edu.data.x_augment__mutmut_1 -> augment."""
    mangled = mutant.partition("__mutmut_")[0].rpartition(".")[2]
    if mangled.startswith("x_"):
        return mangled[2:]
    _, class_name, method = mangled.split("ǁ")
    return f"{class_name}.{method}"


def load_results(root: Path) -> dict[str, dict[str, int | None]]:
    """{module: {mutant name: exit code}} from every mutants/**/*.py.meta file."""
    results = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(root / "mutants"))[: -len(".py.meta")].replace("/", ".")
        results[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return results


def load_equivalents(path: Path) -> set[str]:
    return set(MUTANT_NAME.findall(path.read_text())) if path.is_file() else set()


def tally(exit_codes: dict[str, int | None], equivalents: set[str]) -> Counter:
    counts = Counter()
    for mutant, code in exit_codes.items():
        status = STATUS_BY_EXIT_CODE.get(code, "suspicious")
        if status == "survived" and mutant in equivalents:
            status = "equivalent"
        counts[status if status in COLUMNS else "other"] += 1
    return counts


def score(counts: Counter) -> float | None:
    checked = sum(counts[c] for c in ("killed", "timeout", "survived", "equivalent", "other"))
    return (counts["killed"] + counts["timeout"]) / checked if checked else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="short module names (optim, data, ...); default: all")
    parser.add_argument("--functions", nargs="+", help="count only these functions (e.g. augment Lamb.step)")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants not marked equivalent")
    parser.add_argument("--root", type=Path, default=Path("."), help="the folder that holds mutants/")
    parser.add_argument("--equivalents", type=Path, default=Path("tests/mutation_equivalents.md"))
    args = parser.parse_args(argv)

    results = load_results(args.root)
    if not results:
        print(f"No mutmut results in {args.root / 'mutants'}: run `make mutation` first.", file=sys.stderr)
        return 1
    equivalents = load_equivalents(args.root / args.equivalents)
    wanted = {f"perceiver_edu.{m}" if "." not in m else m for m in args.modules}
    unknown = wanted - set(results)
    if unknown:
        print(f"No results for {sorted(unknown)}; have {sorted(results)}", file=sys.stderr)
        return 1

    header = f"{'module':<26}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'score':>9}"
    print(header)
    print("-" * len(header))
    survivors, total = [], Counter()
    for module, exit_codes in results.items():
        if wanted and module not in wanted:
            continue
        if args.functions:
            exit_codes = {k: v for k, v in exit_codes.items() if function_of(k) in args.functions}
        counts = tally(exit_codes, equivalents)
        total += counts
        value = score(counts)
        print(f"{module:<26}" + "".join(f"{counts[c]:>12}" for c in COLUMNS)
              + (f"{value:>8.1%}" if value is not None else f"{'-':>9}"))
        survivors += [k for k, v in exit_codes.items()
                      if STATUS_BY_EXIT_CODE.get(v) == "survived" and k not in equivalents]
    value = score(total)
    print("-" * len(header))
    print(f"{'total':<26}" + "".join(f"{total[c]:>12}" for c in COLUMNS)
          + (f"{value:>8.1%}" if value is not None else f"{'-':>9}"))
    if args.functions:
        print(f"(functions: {', '.join(args.functions)})")
    if args.survivors:
        print(f"\n{len(survivors)} unexplained survivors (see each with `mutmut show NAME`):")
        for name in survivors:
            print("   ", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
