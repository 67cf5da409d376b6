"""Files: atomic writes and robust image reading, the worker pool, provenance fingerprints, the downloader.

The bottom layer beside :mod:`util.errors`: nothing here imports torch or another ``util`` subpackage.
"""
