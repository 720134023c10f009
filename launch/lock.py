"""Re-resolves the dependency lock (``make lock``): every environment the project installs, pinned.

    python launch/lock.py [--platform-version V] [--only venv,mlpf-reference,...]

Each environment gets one constraints file in ``launch/locks/``; the install steps (``make install``,
``launch/install_*.sh``) install with ``pip -c`` that file, so a fresh machine gets the versions that were
tested together whatever has been released since. ``pyproject.toml`` keeps compatible ranges for people
who ``pip install smilejax`` into an environment of their own.

The platform pieces (jaxlib, JAX's CUDA and ROCm plugins and their PJRT halves) must share one version:
the newest version ``V`` that exists for all of them is locked, and jax with it. On 2026-12-07 jax 0.12.1 had
no CUDA plugin of its own version, and 0.12.0.1 no ROCm plugin, so ``V`` was 0.12.0. Everything else
resolves to its newest release that fits, in one pip resolution per environment (``pip install
--dry-run --report``: nothing is installed, only metadata is fetched), so the accelerator extras
(``smilejax[cuda12]``, ``smilejax[rocm]``) and the GPU compiler of ``bench roofline`` are pinned
consistently with the CPU venv.

Moving the lock is a change of its own: run ``make lock``, then ``make test`` on a fresh clone, and commit
the lock only when the whole suite passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "launch" / "locks"
PLATFORM_PIECES = ("jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-rocm7-plugin", "jax-rocm7-pjrt")
NO_DEPS = "# no-deps"  # marks a line of an .in file that is installed without its dependencies


@dataclasses.dataclass(frozen=True)
class Env:
    name: str
    python: str  # major.minor of the interpreter that resolves (and later runs) the environment
    requirements: tuple[str, ...]  # what is resolved; {V} is the platform version
    pinned: tuple[str, ...] = ()  # name==version lines added as they are (not resolved: --no-deps installs)
    why: str = ""
    install: str = "Installed with pip install --no-deps -r this file (launch/reference_env.sh)"


def read_in(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(resolved requirements, --no-deps pins) of ``launch/locks/NAME.in``."""
    resolved, no_deps = [], []
    for line in (LOCKS / f"{name}.in").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            (no_deps if line.rstrip().endswith(NO_DEPS) else resolved).append(spec)
    return tuple(resolved), tuple(no_deps)


def environments() -> list[Env]:
    envs = [
        Env(
            "venv",
            "3.12",
            # setuptools: the build backend of the editable install (pip --build-constraint takes its pin)
            ("pip", "setuptools", "-e .[test,serve,pythia,lfi,cuda12,rocm]", "jax=={V}", "jaxlib=={V}"),
            # The Triton server binary is unpacked from this wheel without its numpy<2 pin
            # (launch/install_triton.sh); a newer wheel bundles another server: move it by hand, tested.
            pinned=("nvidia-pytriton==0.7.0",),
            why="the smilejax venv (make install), its accelerator extras and the GPU compiler",
            install="Installed with pip install -c this file (constraints) and --build-constraint",
        )
    ]
    for path in sorted(LOCKS.glob("*.in")):
        resolved, no_deps = read_in(path.stem)
        envs.append(Env(path.stem, "3.11", ("pip", *resolved), no_deps, f"launch/locks/{path.name}"))
    return envs


def versions(python: str, package: str) -> list[str]:
    """Every version of ``package`` on the index, newest first."""
    out = subprocess.run(
        [python, "-m", "pip", "index", "versions", package], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"Available versions: (.*)", out)
    if not found:
        raise SystemExit(f"lock: the index lists no versions of {package}:\n{out}")
    return [v.strip() for v in found[1].split(",")]


def platform_version(python: str) -> str:
    """The newest version that jaxlib and every accelerator plugin share."""
    shared: list[str] | None = None
    for piece in PLATFORM_PIECES:
        have = versions(python, piece)
        print(f"lock: {piece}: newest {have[0]}", file=sys.stderr)
        shared = have if shared is None else [v for v in shared if v in have]
        if not shared:
            raise SystemExit(f"lock: no version is shared by all of {', '.join(PLATFORM_PIECES)}")
    return shared[0]


def interpreter(version: str) -> str:
    """The executable of a Python ``version``: pyenv's newest of that minor version, else python{version}."""
    pyenv = _pyenv_version(version)
    env = {**os.environ, "PYENV_VERSION": pyenv} if pyenv else None
    probe = subprocess.run(
        [f"python{version}", "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        env=env,
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"lock: no Python {version} (pyenv install {version}, or put python{version} on PATH)"
        )
    return probe.stdout.strip()


def _pyenv_version(version: str) -> str | None:
    try:
        out = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return None
    matches = [v for v in out.split() if re.fullmatch(rf"{re.escape(version)}\.\d+", v)]
    return matches[-1] if matches else None


def resolve(env: Env, platform: str) -> dict[str, str]:
    """name -> version of everything ``env`` installs, by one pip resolution in a scratch venv."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([interpreter(env.python), "-m", "venv", f"{tmp}/venv"], check=True)
        pip = [f"{tmp}/venv/bin/python", "-m", "pip"]
        subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
        requirements = [r.format(V=platform) for r in env.requirements]
        args = [a for r in requirements for a in (r.split(" ", 1) if r.startswith("-e ") else [r])]
        report = Path(tmp) / "report.json"
        subprocess.run(
            [*pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), *args],
            check=True,
            cwd=ROOT,
        )
        installs = json.loads(report.read_text())["install"]
    pins = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in installs}
    pins.pop("smilejax", None)
    return pins


def write(env: Env, pins: dict[str, str], platform: str) -> Path:
    path = LOCKS / f"{env.name}.txt"
    header = [
        f"# Lock of {env.why} (Python {env.python}).",
        f"# Made by `make lock` (launch/lock.py) on {datetime.date.today()}; platform version {platform}.",
        f"# {env.install}. Do not edit: re-run make lock, test, commit.",
    ]
    body = [f"{name}=={version}" for name, version in sorted(pins.items())]
    hand = [f"{p}  # not resolved: installed without dependencies" for p in env.pinned]
    path.write_text("\n".join([*header, *body, *hand]) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--platform-version", help="lock this jaxlib/plugin version instead of the newest shared"
    )
    parser.add_argument("--only", help="comma-separated environments to re-resolve (default: all)")
    args = parser.parse_args()
    envs = environments()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {e.name for e in envs}
        if unknown:
            raise SystemExit(f"lock: unknown environment(s) {sorted(unknown)}; have {[e.name for e in envs]}")
        envs = [e for e in envs if e.name in wanted]
    platform = args.platform_version or platform_version(interpreter("3.12"))
    print(f"lock: platform version {platform}", file=sys.stderr)
    for env in envs:
        pins = resolve(env, platform)
        print(f"lock: {write(env, pins, platform).relative_to(ROOT)}: {len(pins)} packages", file=sys.stderr)
    print(
        "lock: now run `make test` on a fresh clone; commit launch/locks/ only if it passes", file=sys.stderr
    )


if __name__ == "__main__":
    main()
