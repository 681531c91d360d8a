"""``python -m imagebind_llm.eval <benchmark> [options]``; the benchmarks: toyworld."""

import sys

BENCHMARKS = {"toyworld": "imagebind_llm.eval.toyworld"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        unknown = f"unknown benchmark {argv[0]!r}; " if argv and not argv[0].startswith("-") else ""
        print(f"usage: python -m imagebind_llm.eval {{{','.join(BENCHMARKS)}}} [options]\n"
              f"{unknown}'python -m imagebind_llm.eval toyworld --help' says more", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
