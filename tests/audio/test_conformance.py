"""bt-plugins-audio passes the same conformance kit third-party plugins run (bt_core.testing).

The kit compares outputs on the positions of an ``attention_mask`` as long as the output; an audio mask
covers samples (or filterbank frames), not the encoder's frames, so the pack's example inputs carry none
and the kit's padded checks skip. Padded batches are compared on real frames in test_parity.py.
"""

from __future__ import annotations

import bt_plugins_audio.plugin as audio_plugin

from bt_core.testing import AdapterConformance


class TestAudioPack(AdapterConformance):
    plugin = audio_plugin
    plugin_name = "audio"
