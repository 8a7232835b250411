"""Packaging glue that pyproject.toml cannot express.

The Alembic scripts live at the repository root in ``alembic/`` (docs/architecture.md
§2; the plain ``alembic`` command and ``make migration`` use them there), but
an installed keyd must migrate without a checkout. So the wheel ships that
directory as ``keyd/_migrations`` (read by keyd.store.migrate.script_location).
setuptools can rename a directory into a package only with ``package_dir``
plus an explicit package list, which pyproject's ``packages.find`` cannot
combine; the list is therefore computed here, so new ``keyd/`` subpackages
are picked up without editing anything. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["keyd", "keyd.*"]),
        "keyd._migrations",
        "keyd._migrations.versions",
    ],
    # alembic/ has no __init__.py on purpose: a regular package named
    # "alembic" at the repository root would shadow the Alembic library.
    package_dir={"keyd._migrations": "alembic"},
)
