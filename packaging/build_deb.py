"""Build keyd's Debian package from its wheel: ``make deb`` runs this.

The package is a generated tree packed by ``dpkg-deb`` (docs/packaging.md
says why this rather than debhelper): keyd and its dependencies in their
own virtual environment under ``/usr/lib/keyd`` built on Debian's own
``python3.X``, ``/usr/bin/keyd``, the units, sysusers.d/tmpfiles.d
snippets, ``/etc/keyd/keyd.toml`` as a conffile, shell completions and man
pages generated from the CLI itself, docs, and maintainer scripts from
``packaging/debian/``. The venv is built at a staging path and relocated by
rewriting the few paths that name it (script shebangs), the way
dh-virtualenv does.

Usage: python packaging/build_deb.py --wheel dist/keyd-0.1.0-py3-none-any.whl --out dist
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "packaging"
sys.path.insert(0, str(HERE))

from conffile import commented_config  # noqa: E402
from debmeta import control, copyright_file, debian_changelog  # noqa: E402

PREFIX = "/usr/lib/keyd"
UNITS = ("keyd.service", "keyd-check.service", "keyd-check.timer")
DOCS = (
    "docs/daemon.md",
    "docs/configuration.md",
    "docs/json.md",
    "docs/packaging.md",
    "docs/zitadel.md",
    "docs/architecture.md",
)
EXAMPLES = ("examples/prometheus-rules.yml", "examples/keyd.toml")
COMPLETIONS = {
    "bash_source": "usr/share/bash-completion/completions/keyd",
    "zsh_source": "usr/share/zsh/vendor-completions/_keyd",
    "fish_source": "usr/share/fish/vendor_completions.d/keyd.fish",
}
CONFFILE = "etc/keyd/keyd.toml"


def run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"build_deb: {' '.join(map(str, args))} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def wheel_metadata(wheel: Path) -> dict[str, list[str]]:
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    return {key: meta.get_all(key, []) for key in ("Version", "Requires-Dist")}


def postgres_requirements(requires: list[str]) -> list[str]:
    """The ``postgres`` extra without psycopg's ``binary`` flavour: the
    package uses Debian's libpq5 (security updates through apt) instead of
    the copy bundled in psycopg-binary."""
    out = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if "extra" in marker and "postgres" in marker:
            out.append(spec.strip().replace("[binary]", ""))
    return out


def build_venv(stage: Path, wheel: Path, python: str, requires: list[str]) -> None:
    venv = stage / PREFIX.lstrip("/")
    run(python, "-m", "venv", "--without-pip", venv)
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--quiet",
        "--no-compile",
        "--no-warn-script-location",
        str(wheel),
        *requires,
    )
    relocate(venv, python)
    for junk in venv.rglob("direct_url.json"):  # names the build host's wheel path
        junk.unlink()
    for cache in list(venv.rglob("__pycache__")):
        shutil.rmtree(cache)
    shutil.rmtree(venv / "include", ignore_errors=True)  # empty: no C extensions built here
    strip_objects(venv)


def relocate(venv: Path, python: str) -> None:
    """Make the staged venv the one at ``PREFIX``. Only ``bin/python*`` stay
    in bin/: console scripts (keyd's and its dependencies') would name the
    staging path and are not needed (``/usr/bin/keyd`` runs ``python -m``).
    The interpreter link becomes relative (/usr/lib/keyd/bin -> /usr/bin),
    and pyvenv.cfg's record of the creating command names PREFIX."""
    for entry in (venv / "bin").iterdir():
        if not entry.name.startswith("python"):
            entry.unlink()
    target = venv / "bin" / Path(python).name
    target.unlink()
    target.symlink_to(os.path.relpath(python, f"{PREFIX}/bin"))
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(str(venv), PREFIX))


def strip_objects(venv: Path) -> None:
    """Strip the wheels' shared objects as dh_strip would (debug info and
    .comment/.note sections; the code is unchanged)."""
    for so in venv.rglob("*.so*"):
        if so.is_file() and not so.is_symlink():
            run("strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", so)


def install(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def write(dest: Path, text: str | bytes, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(text.encode() if isinstance(text, str) else text)
    dest.chmod(mode)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # -9n, reproducible


def system_files(stage: Path) -> None:
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        write(stage / "usr/lib/systemd/system" / unit, text)
    install(ROOT / "systemd/keyd.sysusers.conf", stage / "usr/lib/sysusers.d/keyd.conf")
    install(ROOT / "systemd/keyd.tmpfiles.conf", stage / "usr/lib/tmpfiles.d/keyd.conf")
    write(stage / CONFFILE, commented_config((ROOT / "examples/keyd.toml").read_text()))
    # -I: isolated mode. The venv's site-packages only: no user site, no
    # PYTHON* variables, and not the current directory on sys.path.
    write(stage / "usr/bin/keyd", f'#!/bin/sh\nexec {PREFIX}/bin/python -I -m keyd.cli "$@"\n', 0o755)
    install(HERE / "debian/lintian-overrides", stage / "usr/share/lintian/overrides/keyd")


def cli_files(stage: Path, version: str, date: str) -> None:
    """Completions and man pages, generated by running keyd's own CLI (this
    checkout's, the same code as the wheel)."""
    keyd = [sys.executable, "-m", "keyd.cli"]
    for shell, path in COMPLETIONS.items():
        env = {**os.environ, "_KEYD_COMPLETE": shell, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([*keyd], capture_output=True, text=True, env=env, check=False)
        if not result.stdout.strip():
            raise SystemExit(f"build_deb: no {shell} completion: {result.stderr}")
        write(stage / path, result.stdout.replace(f"{sys.executable} -m keyd.cli", "keyd"))
    with tempfile.TemporaryDirectory() as tmp:
        man = Path(sys.executable).with_name("click-man")
        run(man, "keyd", "--target", tmp, "--man-version", version, "--man-date", date)
        for page in sorted(Path(tmp).glob("*.1")):
            write(stage / "usr/share/man/man1" / f"{page.name}.gz", gz(page.read_bytes()))


def doc_files(stage: Path, meta: dict[str, str]) -> None:
    doc = stage / "usr/share/doc/keyd"
    write(doc / "README.md.gz", gz((ROOT / "README.md").read_bytes()))
    for name in DOCS:
        source = ROOT / name
        if source.exists():
            write(doc / "docs" / f"{source.name}.gz", gz(source.read_bytes()))
    for name in EXAMPLES:
        install(ROOT / name, doc / "examples" / Path(name).name)
    write(doc / "changelog.gz", gz(debian_changelog(meta).encode()))
    write(doc / "copyright", copyright_file(stage / PREFIX.lstrip("/")))


def control_files(stage: Path, meta: dict[str, str]) -> None:
    debian = stage / "DEBIAN"
    for script in ("postinst", "prerm", "postrm"):
        install(HERE / "debian" / script, debian / script, 0o755)
    write(debian / "conffiles", f"/{CONFFILE}\n")
    sums = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(stage).as_posix()
        if rel.startswith("DEBIAN/") or rel == CONFFILE:
            continue
        sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")  # noqa: S324
    write(debian / "md5sums", "".join(sums))
    meta = {**meta, "shlibs": shlib_depends(stage)}
    size_kib = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) // 1024 + 1
    write(debian / "control", control({**meta, "installed_size": str(size_kib)}))


def normalize(stage: Path, epoch: int) -> None:
    """Debian modes and one mtime: directories 0755, files 0644 (a wheel's
    modules need no executable bit: nothing runs them directly) except
    /usr/bin/keyd and the maintainer scripts, which stay 0755."""
    for path in [stage, *stage.rglob("*")]:
        if path.is_symlink():
            os.utime(path, (epoch, epoch), follow_symlinks=False)
            continue
        rel = path.relative_to(stage).as_posix()
        executable = (
            path.is_dir()
            or rel == "usr/bin/keyd"
            or rel.startswith("DEBIAN/post")
            or rel.startswith("DEBIAN/pre")
        )
        path.chmod(0o755 if executable else 0o644)
        os.utime(path, (epoch, epoch))


def shlib_depends(stage: Path) -> str:
    """``dpkg-shlibdeps`` over the wheels' shared objects (libc6, libgcc-s1
    with the versions their symbols need). It wants a debian/control."""
    objects = [str(p) for p in stage.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "debian").mkdir()
        (Path(tmp) / "debian/control").write_text("Source: keyd\n\nPackage: keyd\nArchitecture: any\n")
        result = subprocess.run(
            ["dpkg-shlibdeps", "-O", "--ignore-missing-info", f"-l{stage}{PREFIX}", *objects],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
    line = next((x for x in result.stdout.splitlines() if x.startswith("shlibs:Depends=")), None)
    if result.returncode != 0 or line is None:
        raise SystemExit(f"build_deb: dpkg-shlibdeps failed:\n{result.stderr}")
    return line.removeprefix("shlibs:Depends=")


def build(wheel: Path, out: Path, python: str, maintainer: str) -> Path:
    info = wheel_metadata(wheel)
    version = info["Version"][0]
    epoch = int(
        os.environ.get("SOURCE_DATE_EPOCH") or run("git", "-C", ROOT, "log", "-1", "--format=%ct").strip()
    )
    pyver = run(python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    arch = run("dpkg", "--print-architecture").strip()
    meta = {
        "version": version,
        "arch": arch,
        "python": f"python{pyver}",
        "maintainer": maintainer,
        "epoch": str(epoch),
    }
    with tempfile.TemporaryDirectory(prefix="keyd-deb-") as tmp:
        stage = Path(tmp) / "root"
        build_venv(stage, wheel, python, postgres_requirements(info["Requires-Dist"]))
        system_files(stage)
        date = run("date", "-u", "-d", f"@{epoch}", "+%Y-%m-%d").strip()
        cli_files(stage, version, date)
        doc_files(stage, meta)
        control_files(stage, meta)
        normalize(stage, epoch)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"keyd_{version}_{arch}.deb"
        run(
            "dpkg-deb",
            "--root-owner-group",
            "-Zxz",
            "--build",
            stage,
            deb,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
        )
    return deb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument(
        "--python",
        default="/usr/bin/python3",
        help="Debian's interpreter the venv is built on (default /usr/bin/python3)",
    )
    parser.add_argument(
        "--maintainer",
        default=None,
        help="Name <address> (default: DEB_MAINTAINER, DEBFULLNAME/DEBEMAIL, "
        "then git's user.name/user.email)",
    )
    args = parser.parse_args()
    maintainer = args.maintainer or default_maintainer()
    python = os.path.realpath(args.python)  # python3 -> python3.11: the venv names the minor
    print(build(args.wheel.resolve(), args.out.resolve(), python, maintainer))


def default_maintainer() -> str:
    """Whoever builds a package maintains that build: Debian's own variables
    first (as dch reads them), else the git identity of the checkout."""
    if os.environ.get("DEB_MAINTAINER"):
        return os.environ["DEB_MAINTAINER"]
    name, mail = os.environ.get("DEBFULLNAME"), os.environ.get("DEBEMAIL")
    if not (name and mail):

        def git(key: str) -> str:
            return subprocess.run(
                ["git", "-C", str(ROOT), "config", key], capture_output=True, text=True, check=False
            ).stdout.strip()

        name, mail = name or git("user.name"), mail or git("user.email")
    if not (name and mail):
        raise SystemExit(
            "build_deb: say who maintains this build: DEB_MAINTAINER='Name <addr>' "
            "(or DEBFULLNAME and DEBEMAIL, or git config user.name/user.email)"
        )
    return f"{name} <{mail}>"


if __name__ == "__main__":
    main()
