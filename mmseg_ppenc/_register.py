"""Importing this module registers the plugin (used as an mmseg registry location)."""
from .registration import register_all_modules

register_all_modules()
