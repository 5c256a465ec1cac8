"""Measurement drivers behind the scripts in ``tools/`` (benchmark, profile, end to end).

They belong to the repository, not to the installed ``mmseg_ppenc`` package: they read
the checkout's configs and write reports.
"""
