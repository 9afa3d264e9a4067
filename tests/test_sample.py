"""The sampling command writes a labelled PNG grid from the shipped model, offline."""

from PIL import Image

from lesson_lib.sample import main


def test_sample_command_writes_a_png(tmp_path):
    out = tmp_path / "samples.png"
    main(["--steps", "3", "--per-digit", "2", "--out", str(out), "--device", "cpu"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
