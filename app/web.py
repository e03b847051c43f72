"""The Gradio layout of the web app: two tabs, Ask and Explore a store, over app.backend.Backend.

Handlers catch the user errors of the backend and show them as an `error: ...` line in the page
(a refused path, a checkpoint trained on other features, an undecodable video), never a trace.
"""

from __future__ import annotations

import json

import gradio as gr

from app.backend import USER_ERRORS, Backend
from app.explore import filter_table
from app.render import point_cloud_figure

STATUSES = ["all", "ok", "failed", "missing modality"]


def _error(exc: BaseException) -> str:
    return f"error: {exc}".replace("\n", " ")


def _options(text: str) -> list[str]:
    """One option per line of the options box."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def ask_tab(backend: Backend) -> None:
    """Upload or pick a video, ask a question (with options), see the answer and the previews."""
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.Video(label="upload a video", sources=["upload"], elem_id="ask-upload")
            picked = gr.Dropdown(backend.videos(), label="or pick one from the data folder", elem_id="ask-video")
            ckpts = backend.checkpoints()
            ckpt = gr.Dropdown(ckpts, value=ckpts[0] if ckpts else None, label="checkpoint", elem_id="ask-ckpt")
            question = gr.Textbox(label="question", elem_id="ask-question")
            options = gr.Textbox(label="options (one per line; none = open-ended)", lines=5, elem_id="ask-options")
            go = gr.Button("Ask", variant="primary", elem_id="ask-go")
        with gr.Column(scale=2):
            answer = gr.Markdown(elem_id="ask-answer")
            scores = gr.Dataframe(headers=["option", "text", "score"], label="option scores", elem_id="ask-scores")
            parts = gr.Dataframe(headers=["modalities", "answer", "score of that answer"],
                                 label="per-modality contributions (each alone, each left out)", elem_id="ask-parts")
    gallery = gr.Gallery(label="frames with depth, flow, normals (stored frames, left to right)", columns=4,
                         elem_id="ask-gallery")
    cloud = gr.Plot(label="point cloud", elem_id="ask-cloud")
    raw = gr.Code(label="JSON result", language="json", max_lines=24, elem_id="ask-json")

    def run(up, pick, q, opts, ck):
        try:
            out = backend.ask(up or pick, q, _options(opts), ck)
        except USER_ERRORS as exc:
            return _error(exc), [], [], [], None, ""
        r = out["result"]
        text = f"**answer:** {r['answer']}" + (f"  (missing, zeroed: {', '.join(r['missing'])})" if r["missing"] else "")
        text += "  \nextraction seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in out["timings"].items())
        fig = point_cloud_figure(out["cloud"]) if out["cloud"] is not None else None
        return (text, backend.score_rows(r), backend.contribution_rows(r), out["views"], fig,
                json.dumps(r, indent=1))

    go.click(run, [upload, picked, question, options, ckpt], [answer, scores, parts, gallery, cloud, raw])


def explore_tab(backend: Backend) -> tuple:
    """A store's report, its searchable video table, one video's modalities and eval questions."""
    stores = backend.stores()
    with gr.Row():
        store = gr.Dropdown(stores, value=stores[0] if stores else None, label="store", elem_id="ex-store")
        preds = backend.predictions()
        predictions = gr.Dropdown(preds, value=preds[0] if preds else None, label="eval predictions file",
                                  elem_id="ex-preds")
    report = gr.Markdown(elem_id="ex-report")
    with gr.Row():
        search = gr.Textbox(label="search id or reason", elem_id="ex-search")
        status = gr.Dropdown(STATUSES, value="all", label="status", elem_id="ex-status")
    table = gr.Dataframe(headers=["video_id", "split", "status", "reason"], label="videos", elem_id="ex-table")
    with gr.Row():
        video = gr.Textbox(label="video id (type it or click a row)", elem_id="ex-video")
        show = gr.Button("Show video", elem_id="ex-show")
    detail = gr.Markdown(elem_id="ex-detail")
    stats = gr.Dataframe(headers=["modality", "shape", "mean", "std", "zeros", "finite", "blank"],
                         label="stored modalities", elem_id="ex-stats")
    gallery = gr.Gallery(label="stored features (token norms per frame) and raw maps", columns=8, elem_id="ex-gallery")
    cloud = gr.Plot(label="point cloud", elem_id="ex-cloud")
    with gr.Row():
        qtype = gr.Textbox(value="all", label="question type (all or one)", elem_id="ex-qtype")
        correct = gr.Dropdown(["all", "right", "wrong"], value="all", label="right / wrong", elem_id="ex-correct")
    questions = gr.Dataframe(headers=["qid", "type", "prediction", "answer", "right"], label="questions of this video",
                             elem_id="ex-questions")

    def overview(st, text, sts):
        return _overview(backend, st, text, sts)

    def one_video(st, vid, pr, qt, ok):
        try:
            d = backend.video_detail(st, (vid or "").strip())
            qs = backend.questions(pr, d["video_id"], qt or "all", ok)
        except USER_ERRORS as exc:
            return _error(exc), [], [], None, []
        lines = [f"### {d['video_id']}: {d['status']}"]
        lines += [f"- {'FAILED' if f.get('fatal', True) else 'missing'} at **{f.get('stage')}**: {f.get('reason')}"
                  for f in d["failures"]]
        if d["meta"]:
            lines.append(f"- decoder {d['meta'].get('decoder')}, {d['meta'].get('num_frames')} frames at "
                         f"{d['meta'].get('fps')} fps, stored frames {d['meta'].get('frame_indices')}")
        fig = point_cloud_figure(d["cloud"]) if d["cloud"] is not None else None
        return "\n".join(lines), d["stats"], d["images"], fig, qs

    def pick_row(rows, evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.update()

    store.change(overview, [store, search, status], [report, table])
    search.submit(overview, [store, search, status], [report, table])
    status.change(overview, [store, search, status], [report, table])
    table.select(pick_row, [table], [video])
    detail_inputs = [store, video, predictions, qtype, correct]
    detail_outputs = [detail, stats, gallery, cloud, questions]
    show.click(one_video, detail_inputs, detail_outputs)
    video.submit(one_video, detail_inputs, detail_outputs)
    correct.change(one_video, detail_inputs, detail_outputs)
    qtype.submit(one_video, detail_inputs, detail_outputs)
    return store, search, status, report, table


def build_ui(backend: Backend) -> gr.Blocks:
    """The two-tab app; the Explore tab loads the first store's report on page load."""
    with gr.Blocks(title="CREMA: ask a video, look at a store") as ui:
        gr.Markdown("## CREMA — ask a video, look at a store (read-only)")
        with gr.Tab("Ask", elem_id="tab-ask"):
            ask_tab(backend)
        with gr.Tab("Explore a store", elem_id="tab-explore"):
            store, search, status, report, table = explore_tab(backend)
        ui.load(lambda st, te, sts: _overview(backend, st, te, sts), [store, search, status], [report, table])
    return ui


def _overview(backend: Backend, store, text, status):
    """(report markdown, filtered video table) of the chosen store, or an error line."""
    if not store:
        return "no store under the app's roots (make extract first, or set app.roots)", []
    try:
        md, rows = backend.store_overview(store)
    except USER_ERRORS as exc:
        return _error(exc), []
    return md, filter_table(rows, text, status)


def backend_from_cfg(cfg) -> Backend:
    """The Backend of a composed conf/app.yaml: its roots (plus Gradio's upload folder, where
    uploaded videos land), features config, and the dataset's question -> video map."""
    from gradio.utils import get_upload_folder

    from app.roots import Roots
    from core.util import to_plain

    roots = {**to_plain(cfg.app.roots), "uploads": get_upload_folder()}
    return Backend(Roots(roots), cfg.features, qa_videos=_qa_videos(cfg), device=cfg.device,
                   max_points=cfg.trainer.data.max_points)


def _qa_videos(cfg) -> dict[str, str]:
    """{qid: video_id} of the dataset's annotations, for the Explore tab's questions (empty when the
    dataset's annotations are not there: the tab then lists no questions, and says nothing worse)."""
    from core.datasets import load_dataset

    try:
        index = load_dataset(cfg.dataset)
    except Exception as exc:  # a missing or foreign dataset folder must not stop the app
        print(f"app: no questions from dataset {cfg.dataset.name} ({str(exc)[:200]})")
        return {}
    return {r.qid: r.video_id for records in index.qa.values() for r in records}


def serve(cfg) -> None:
    """Build and launch the app on cfg.app.host:cfg.app.port (127.0.0.1 unless told otherwise)."""
    backend = backend_from_cfg(cfg)
    print(f"app: roots {', '.join(f'{k}={v}' for k, v in backend.roots.roots.items())}", flush=True)
    build_ui(backend).launch(server_name=str(cfg.app.host), server_port=int(cfg.app.port), show_error=False,
                             footer_links=[])
