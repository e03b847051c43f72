"""The web app's read boundary and its pure parts, without a browser (fast).

Every path the browser can send goes through Roots.check: outside the configured roots, through
`..`, or through a symlink that leaves them, it is refused before anything is opened.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app import explore, render
from app.backend import Backend
from app.roots import PathRefused, Roots


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "stores" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "eval").mkdir(parents=True)
    (tmp_path / "data" / "videos").mkdir(parents=True)
    (tmp_path / "data" / "videos" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("not for the browser")
    (tmp_path / "runs" / "escape").symlink_to(tmp_path)  # a link inside a root that leaves it
    roots = Roots({"stores": tmp_path / "stores", "runs": tmp_path / "runs", "data": tmp_path / "data"})
    return tmp_path, roots


def test_paths_under_the_roots_are_allowed(tree):
    tmp, roots = tree
    assert roots.check(tmp / "data" / "videos" / "a.mp4") == (tmp / "data" / "videos" / "a.mp4").resolve()
    assert roots.check(str(tmp / "stores" / "demo")) == (tmp / "stores" / "demo").resolve()


@pytest.mark.parametrize("where", ["/etc/passwd", "{tmp}/secret.txt", "{tmp}/data/../secret.txt",
                                   "{tmp}/runs/escape/secret.txt", "{tmp}/stores-other", "", "relative/path"])
def test_paths_outside_the_roots_are_refused(tree, where):
    tmp, roots = tree
    with pytest.raises(PathRefused):
        roots.check(where.format(tmp=tmp))


def test_backend_refuses_before_reading(tree):
    """Every browser action with a path outside the roots is refused, naming the path."""
    tmp, roots = tree
    backend = Backend(roots, features_cfg={})
    secret = str(tmp / "secret.txt")
    for call in (lambda: backend.store_overview("/etc"), lambda: backend.video_detail(secret, "x"),
                 lambda: backend.questions(secret, "x"), lambda: backend.asker(str(tmp)),
                 lambda: backend.ask(secret, "what?", [], str(tmp / "runs"))):
        with pytest.raises(PathRefused, match="outside the app's roots"):
            call()


def test_backend_lists_only_what_is_under_its_roots(tree):
    tmp, roots = tree
    (tmp / "outside.mp4").write_bytes(b"x")
    backend = Backend(roots, features_cfg={})
    assert backend.videos() == [str(tmp / "data" / "videos" / "a.mp4")]


def test_eval_rows_filter_by_type_and_correctness(tmp_path):
    rows = [{"qid": "q1", "qtype": "motion", "prediction": "left", "answer": "left", "strict": 1.0},
            {"qid": "q2", "qtype": "sound", "prediction": "a low tone", "answer": "silence", "strict": 0.0},
            {"qid": "q3", "qtype": "motion", "prediction": "up", "answer": "up", "strict": 1.0}]
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"results": [{"rows": rows}]}))
    videos = {"q1": "v1", "q2": "v1", "q3": "v2"}
    assert [r[0] for r in explore.eval_rows(path, videos, "v1")] == ["q1", "q2"]
    assert [r[0] for r in explore.eval_rows(path, videos, "v1", correct="wrong")] == ["q2"]
    assert [r[0] for r in explore.eval_rows(path, videos, "v1", qtype="motion", correct="right")] == ["q1"]


def test_filter_table_searches_ids_and_reasons():
    rows = [["v1", "train", "ok", ""], ["v2", "test", "failed", "[decode] cannot open"]]
    assert explore.filter_table(rows, "CANNOT") == [rows[1]]
    assert explore.filter_table(rows, "", "ok") == [rows[0]]


def test_stats_tell_a_blank_modality():
    assert explore.modality_stats(np.zeros((4, 65, 8), np.float16))["blank"]
    assert not explore.modality_stats(np.random.default_rng(0).normal(size=(4, 65, 8)))["blank"]


def test_token_grid_is_the_patch_grid_after_cls():
    tokens = np.arange(65 * 4, dtype=np.float32).reshape(65, 4)
    assert render.token_grid(tokens).shape == (8, 8)
    assert render.heatmap(render.token_grid(tokens)).dtype == np.uint8
    assert render.to_image(np.zeros((6, 5), np.float32)).shape == (6, 5, 3)


def test_listings_stay_inside_the_roots(tree):
    """A symlink inside a root that leaves it (runs/escape -> the parent) is not followed."""
    tmp, roots = tree
    (tmp / "runs" / "r" / "eval" / "test.json").write_text("{}")
    (tmp / "eval").mkdir()
    (tmp / "eval" / "leak.json").write_text("{}")
    (tmp / "stores" / "demo" / "store.json").write_text("{}")
    backend = Backend(roots, features_cfg={})
    assert backend.predictions() == [str(tmp / "runs" / "r" / "eval" / "test.json")]
    assert backend.stores() == [str(tmp / "stores" / "demo")]


def test_point_cloud_figure_holds_every_point():
    xyz = np.random.default_rng(0).integers(0, 255, size=(500, 3)).astype(np.uint8)
    fig = render.point_cloud_figure(xyz)
    assert len(fig.data[0].x) == 500 and "500 points" in fig.layout.title.text


def test_predict_and_app_configs_compose():
    from hydra import compose, initialize_config_dir

    from presets import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict = compose(config_name="predict", overrides=['predict.options=["a b","c"]'])
        app = compose(config_name="app", overrides=["out=/tmp/x"])
    assert list(predict.predict.options) == ["a b", "c"] and predict.trainer.data.max_points > 0
    assert app.app.host == "127.0.0.1" and app.app.roots.stores == "/tmp/x"


def test_make_predict_passes_quotes_and_options_through():
    """make predict QUESTION/OPTIONS with quotes and apostrophes reach the config unchanged."""
    import shlex
    import subprocess

    from hydra import compose, initialize_config_dir

    from presets import CONF

    question, options = 'what\'s the "red" thing?', ["it's a", 'b "c"', "it does not move"]
    dry = subprocess.run(["make", "--no-print-directory", "-n", "predict", "VIDEO=x.mp4", f"QUESTION={question}", f"OPTIONS={'|'.join(options)}"],
                         cwd=CONF.parent, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    overrides = [a for a in shlex.split(dry) if a.startswith("predict.")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=overrides)
    assert cfg.predict.question == question and list(cfg.predict.options) == options and cfg.predict.video == "x.mp4"
