"""``python -m app -i IN -o OUT -m MODELS``: run the MONAI Deploy application."""

from __future__ import annotations

import logging
import resource
import sys


def _raise_stack_limit() -> None:
    # Holoscan warns below 32 MB of stack; raise the soft limit when the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 32 * 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def main() -> int:
    _raise_stack_limit()
    from operators.processes import start_early

    start_early()  # the reader processes' imports run while MONAI's do here
    from operators.report import setup_logging

    setup_logging()
    from operators.model_package import ModelPackageError

    from .app import BodyPartApp
    from .settings import SettingsError

    try:
        BodyPartApp().run()
    except (ModelPackageError, SettingsError) as e:
        logging.getLogger("bodypart").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
