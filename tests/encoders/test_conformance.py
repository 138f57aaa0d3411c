"""bt-plugins-encoders passes the same conformance kit third-party plugins run (bt_core.testing)."""

from __future__ import annotations

import bt_plugins_encoders.plugin as encoders_plugin

from bt_core.testing import AdapterConformance


class TestEncodersPack(AdapterConformance):
    plugin = encoders_plugin
    plugin_name = "encoders"
