"""The whole conformance suite for this plugin: one subclass of bt's kit."""

from bt_core.testing import AdapterConformance

import bt_plugin_example.plugin


class TestAcmePlugin(AdapterConformance):
    plugin = bt_plugin_example.plugin
    plugin_name = "example"
