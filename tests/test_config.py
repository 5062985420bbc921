import pytest

from pipelines.config import ConfigError, RunConfig, load_config, preset_path


def test_default_preset_matches_dataclass_defaults():
    assert load_config() == RunConfig()


def test_smoke_preset_loads_and_changes_outputs():
    smoke = load_config(preset_path("smoke"))
    assert smoke.frames.width == 64
    assert smoke.content_hash() != RunConfig().content_hash()


def test_overrides_are_typed():
    cfg = load_config(None, ["scenes.threshold=30", "frames.resize=fit", "ingest.decoders=['pyav']"])
    assert cfg.scenes.threshold == 30.0 and isinstance(cfg.scenes.threshold, float)
    assert cfg.frames.resize == "fit"
    assert cfg.ingest.decoders == ("pyav",)


@pytest.mark.parametrize(
    "override, message",
    [
        ("scenes.nope=1", "unknown config key scenes.nope"),
        ("nosection.x=1", "unknown config key nosection"),
        ("frames.num_frames=abc", "frames.num_frames must be int"),
        ("frames.resize=zoom", "frames.resize must be one of"),
        ("scenes.min_clip_s=20", "min_clip_s <= max_clip_s"),
        ("scenes.detector=magic", "scenes.detector must be one of"),
        ("scenes.transnet_threshold=1.5", "scenes.transnet_threshold must be in"),
        ("scenes.transnet_device=tpu", "scenes.transnet_device must be"),
        ("scenes.dissolve_max_residual=2", "dissolve_max_residual"),
        ("ingest.decoders=['ffmpeg']", "ingest.decoders"),
        ("novalue", "section.key=value"),
    ],
)
def test_bad_config_is_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_runtime_settings_do_not_change_the_output_hash():
    a = load_config(None, ["runtime.num_cpus=1"])
    b = load_config(None, ["runtime.num_cpus=2"])
    assert a.content_hash() == b.content_hash()


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenes\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
