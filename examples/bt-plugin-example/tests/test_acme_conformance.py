"""The whole conformance suite for this plugin: one subclass of bt's kit."""

import bt_plugin_example.plugin

from bt_core.testing import AdapterConformance


class TestAcmePlugin(AdapterConformance):
    plugin = bt_plugin_example.plugin
    plugin_name = "example"
