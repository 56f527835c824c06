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
    from operators.input.processes import start_early

    start_early()  # the reader processes' imports run while MONAI's do here
    from operators.outputs.report import setup_logging

    setup_logging()
    from operators.model.model_package import ModelPackageError
    from operators.outputs.output_files import OutputError

    from .app import BodyPartApp, InputPathError
    from .settings import SettingsError

    app = BodyPartApp()
    try:
        app.run()
    except (ModelPackageError, SettingsError, OutputError, InputPathError) as e:
        # before any work: one clear line, no traceback
        logging.getLogger("bodypart").error("%s", e)
        return 2
    status = getattr(app, "run_status", None)
    if status is not None and status.incomplete_reason:
        logging.getLogger("bodypart").error("the run did not complete: %s", status.incomplete_reason)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
