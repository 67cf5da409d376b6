"""Download, verify, safely unpack and convert the public image datasets (moved from util/io/download.py)."""

from util.io.download.converters import *  # noqa: F401,F403
