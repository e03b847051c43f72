"""`make preview`: the real stages on one video, rendered to a PNG."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media import write_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_preview_renders_every_view(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=12, size=(96, 64))
    png = tmp_path / "p.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/preview.py"), f"preview.video={video}",
                           f"preview.png={png}", "preview.frames=2", "features.decode.num_frames_stored=2",
                           "dataset=videos", f"dataset.path={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    img = np.asarray(Image.open(png).convert("RGB"))
    # 4 image columns + the point cloud, 2 rows: a wide figure with real content (not blank)
    assert img.shape[1] > 4 * img.shape[0] / 2 and img.std() > 20


def test_the_title_says_which_stages_have_random_weights():
    """issue 27: nothing on the preview said that the tiny preset's depth model is random."""
    from hydra import compose, initialize_config_dir

    from scripts.preview import caption, random_stages

    def stages(preset):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return random_stages(compose(config_name="preview", overrides=[f"features={preset}"]))

    tiny = stages("tiny")
    assert "depth" in tiny and "encoder" in tiny and stages("full") == []
    video = {"video_id": "v", "decoder": "decord", "num_frames": 2, "fps": 10.0, "errors": []}
    assert "RANDOM-INIT weights (tiny preset) in depth" in caption(video, tiny)
    assert "RANDOM" not in caption(video, [])
