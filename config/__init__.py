"""Settings for every part of lvm-queue, read from ``LVM_*`` environment variables and ``.env``."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
