"""Run the real ``keyd run`` and SIGKILL it at one point of a rotation, for
the crash-safety tests (tests/integration/rotation/test_rotation_sigkill.py).

    python -m tests.support.crashpoint POINT --config keyd.toml run

POINT is where the process kills itself (``kill -9`` semantics: no
cleanup, no flush, nothing after the point runs):

* ``after_add_key``: AddKey answered, before keyd records the new key id;
* ``after_proof``: the proof was recorded (state ``proven``);
* ``after_first_location``: the first of the old key's locations holds the
  new key, the others do not;
* ``after_hook``: the ``after_publish`` command ran, before it is recorded;
* ``before_remove``: just before RemoveKey of the old key (retirement).

Only the named point is instrumented; everything else is keyd as shipped.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

POINTS = ("after_add_key", "after_proof", "after_first_location", "after_hook", "before_remove")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str, when: Any = lambda result, *a, **kw: True) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(result, *args, **kwargs):
            _die()
        return result

    setattr(owner, name, wrapped)


def install(point: str) -> None:
    from keyd.actions import publish, rotation_steps
    from keyd.clients import zitadel
    from keyd.store import rotations
    from keyd.vocab import RotationState

    if point == "after_add_key":
        _after(zitadel.ZitadelKeyAPI, "add_key")
    elif point == "after_proof":
        _after(
            rotations,
            "transition",
            lambda row, *a, **kw: row is not None and row.state == RotationState.PROVEN,
        )
    elif point == "after_first_location":
        _after(publish.Publisher, "publish", lambda wrote, *a, **kw: wrote)
    elif point == "after_hook":
        _after(rotation_steps, "run_hook")
    elif point == "before_remove":
        original = zitadel.ZitadelKeyAPI.remove_key

        def remove(self: Any, user_id: str, key_id: str) -> None:
            _die()
            original(self, user_id, key_id)

        zitadel.ZitadelKeyAPI.remove_key = remove  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")


def main(argv: list[str]) -> int:
    install(argv[0])
    from keyd.cli import main as keyd_main

    return keyd_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
