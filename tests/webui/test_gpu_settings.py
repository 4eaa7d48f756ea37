"""The GPU levers' settings (issue 18): each ATELIER_ variable reaches the engine's switches."""

import pytest

from pipelines.devices import Switches
from webui.settings import Settings, SettingsError


def test_gpu_lever_settings_reach_the_switches():
    settings = Settings.from_env(
        {
            "ATELIER_COMPILE": "1",
            "ATELIER_COMPILE_SCOPE": "regional",
            "ATELIER_COMPILE_MODE": "reduce-overhead",
            "ATELIER_CHANNELS_LAST": "1",
            "ATELIER_FUSE_QKV": "1",
            "ATELIER_VAE_UPCAST": "off",
        },
        env_file=None,
    )
    assert settings.switches() == Switches(
        compile=True,
        compile_scope="regional",
        compile_mode="reduce-overhead",
        channels_last=True,
        fuse_qkv=True,
        vae_upcast="off",
    )
    assert Settings.from_env({}, env_file=None).switches() == Switches()
    with pytest.raises(SettingsError, match="ATELIER_FUSE_QKV must be 1 \\(on\\) or 0 \\(off\\); got 'yes'"):
        Settings.from_env({"ATELIER_FUSE_QKV": "yes"}, env_file=None)
