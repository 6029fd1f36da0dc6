"""What the user sees: our loggers at `logging.level`, third-party chatter off unless it is DEBUG.

The level travels to Ray actors as SYNTHGEN_LOG_LEVEL (every SYNTHGEN_* variable is forwarded, see
pipeline/driver/localray.py), so the model loaders in each actor silence the same way as the driver.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LEVEL_ENV = "SYNTHGEN_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """The configured level applies to our loggers only: third-party DEBUG output (botocore) can carry
    credentials, and is noise anyway."""
    os.environ[LEVEL_ENV] = level
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format=FORMAT)
    for name in ("synthgen", "pipeline"):
        logging.getLogger(name).setLevel(level)


def debug() -> bool:
    return os.environ.get(LEVEL_ENV, "INFO") == "DEBUG"


def quiet_libraries() -> None:
    """Before loading models: no progress bars, advisories ("requires torchvision", "falling back")
    or deprecation warnings of the versions we pin from diffusers, transformers and the hub, unless
    logging.level=DEBUG. Errors still print."""
    if debug():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    # diffusers >= 0.36 renamed from_pretrained's torch_dtype to dtype; older ones know only torch_dtype
    warnings.filterwarnings("ignore", message=".*`torch_dtype` is deprecated", category=FutureWarning)
    # diffusers still passes hf_hub_download's retired local_dir_use_symlinks when it loads a hub id
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated",
                            category=UserWarning)
