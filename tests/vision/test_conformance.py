"""bt-plugins-vision passes the same conformance kit third-party plugins run (bt_core.testing)."""

from __future__ import annotations

import bt_plugins_vision.plugin as vision_plugin

from bt_core.testing import AdapterConformance


class TestVisionPack(AdapterConformance):
    plugin = vision_plugin
    plugin_name = "vision"
