"""The web page: reference + mask, target + box or painted mask, settings, result (Gradio Blocks).

Images a person uploads are read once by ``src.image_io.read_image`` (the project's one reader:
pixel limit, 16-bit, EXIF orientation) and the uploaded file is deleted (``demo.uploads``); the page keeps
the arrays in per-session state, so the pictures it shows (previews with the box drawn on them) are
never what the model reads. Two endpoints generate, and they share one queue slot (one generation
at a time): the page's button, and ``/generate`` for API clients (``gradio_client``), which sends
image files instead of page state. Every mistake is a message in the page, never a traceback.
"""

import html
import secrets
import threading
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from demo.generation import (SCHEDULERS, Outcome, Settings, Teleport, crop_size, default_feather, describe,
                             generate, model_defaults)
from demo.inputs import (box_from_corners, check_box, click_to_pixel, format_box, outline,
                         painted_mask, parse_box, reference_mask, to_preview)
from demo.uploads import Uploads
from src.collage import collage_picture
from src.image_io import read_image, write_image

COMPOSITE_CHOICES = [
    ("box: only the grown box changes (default)", "box"),
    ("mask: only the painted mask (dilated) changes", "mask"),
    ("crop: the whole generated crop, as the authors do", "crop"),
]
# One generation at a time per model, for the page and the API together: two tabs (or a tab and a
# script) cannot run the machine out of memory. Light events (uploads, clicks) run beside it.
MODEL_QUEUE = dict(concurrency_limit=1, concurrency_id="model")
LIGHT = dict(concurrency_limit=4, api_visibility="private", show_progress="hidden")
MAX_STEPS = 1000  # the schedule's own length
BRUSH = gr.Brush(colors=[("#ff00dc", 0.6)], color_mode="fixed")


def _editor(label: str, elem_id: str, placeholder: str, visible: bool = True) -> gr.ImageEditor:
    """A painting canvas whose picture the app sets (no upload of its own): only its strokes are read."""
    return gr.ImageEditor(label=label, elem_id=elem_id, type="numpy", image_mode="RGBA", format="png",
                          sources=(), transforms=(), layers=False, brush=BRUSH, height=300,
                          placeholder=placeholder, buttons=["fullscreen"], visible=visible)


def _picture(label: str, elem_id: str, **kw: Any) -> gr.Image:
    kw.setdefault("buttons", ["fullscreen"])
    return gr.Image(label=label, elem_id=elem_id, format="png", **kw)


def _upload(label: str, elem_id: str, height: int = 280) -> gr.Image:
    """An upload box. Its file is read by our own handler (``preprocess=False``), never by Gradio."""
    return _picture(label, elem_id, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                    height=height)


def _fail(err: Exception) -> gr.Error:
    # Gradio renders toast messages as HTML; file names come from the user.
    return gr.Error(html.escape(str(err)), title="Cannot generate", duration=None, print_exception=False)


class DemoApp:
    """The handlers of the page, around one loaded pipeline."""

    def __init__(self, pipe: Any, *, model_label: str, device_label: str, max_pixels: int | None,
                 upload_root: str | Path, keep_s: float = 1800) -> None:
        self.pipe = pipe
        self.model_label = model_label
        self.device_label = device_label
        self.max_pixels = max_pixels
        self.upload_root = Path(upload_root)
        self.uploads = Uploads(upload_root, ttl_s=keep_s)
        self.defaults = model_defaults(pipe)
        self._lock = threading.Lock()  # the queue already serialises; this also covers direct calls

    # ----------------------------------------------------------------------------------- inputs

    def read_uploads(self, *uploads: tuple[Any, str, str | None]) -> list[np.ndarray | None]:
        """Images of ``(payload or None, what, mode)`` uploads, read with the project's reader. Every
        file is taken (and so deleted) before any is decoded: a bad one leaves none behind."""
        taken = []
        for payload, what, _ in uploads:
            try:
                taken.append(None if payload is None else self.uploads.take(payload))
            except ValueError as err:
                raise ValueError(f"{what}: {err}") from None
        images = []
        for item, (_, what, mode) in zip(taken, uploads):
            try:
                images.append(None if item is None else read_image(item[0], mode, name=item[1],
                                                                   max_pixels=self.max_pixels))
            except ValueError as err:  # ImageError is one
                raise ValueError(f"{what}: {err}") from None
        return images

    def _uploaded(self, payload: Any, what: str, mode: str | None) -> np.ndarray | None:
        try:
            return self.read_uploads((payload, what, mode))[0]
        except ValueError as err:
            gr.Warning(html.escape(str(err)), duration=None, title="Cannot use this image")
            return None

    def reference_uploaded(self, payload: Any):
        ref = self._uploaded(payload, "reference", None)  # RGBA when it has transparency
        if ref is None:
            return None, None, None
        picture = to_preview(ref)
        return picture, ref, {"background": picture, "layers": [], "composite": picture}

    def mask_file_uploaded(self, payload: Any):
        mask = self._uploaded(payload, "reference mask file", "L")
        return (None, None) if mask is None else (to_preview(mask), mask)

    def target_uploaded(self, payload: Any):
        target = self._uploaded(payload, "target", "RGB")
        if target is None:
            return None, None, "", None, None
        picture = to_preview(target)
        return picture, target, "", None, {"background": picture, "layers": [], "composite": picture}

    def target_clicked(self, target: np.ndarray | None, corner: list[int] | None, evt: gr.SelectData):
        """First click: a corner (marked); second click: the box, written into the box field."""
        if target is None or evt.index is None:
            return gr.skip(), gr.skip(), None
        point = click_to_pixel(evt.index, target.shape[:2])
        if corner is None:  # a small square around the corner, big enough to see on a large photo
            r = max(3, min(target.shape[:2]) // 100)
            return (to_preview(outline(target, (point[0] - r, point[1] - r, point[0] + r + 1, point[1] + r + 1))),
                    gr.skip(), list(point))
        box = box_from_corners(corner, point, target.shape[:2])
        return to_preview(outline(target, box)), format_box(box), None

    def box_typed(self, target: np.ndarray | None, text: str):
        if target is None:
            return gr.skip(), None
        try:
            parsed = parse_box(text)
            box = None if parsed is None else check_box(parsed, target.shape[:2])
        except ValueError:
            box = None  # the Generate button says what is wrong; typing should not pop up errors
        return to_preview(outline(target, box)), None

    def scheduler_changed(self, scheduler: str) -> int:
        return model_defaults(self.pipe, scheduler).steps

    @staticmethod
    def place_changed(place: str):
        mask = place == "mask"
        return gr.update(visible=not mask), gr.update(visible=mask), gr.update(visible=mask)

    # ------------------------------------------------------------------------------- generation

    def _settings(self, shape: bool, scheduler: str, steps: Any, guidance: Any, seed: Any, random_seed: bool,
                  composite: str, feather: Any) -> Settings:
        try:
            seed = secrets.randbelow(2**31) if random_seed else int(seed)
            settings = Settings(scheduler=str(scheduler), steps=int(steps), guidance=float(guidance), seed=seed,
                                composite=str(composite), shape_control=bool(shape),
                                feather=None if feather is None else max(0, int(feather)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"settings: {err}") from None
        if not 0 <= settings.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {settings.seed}")
        if settings.steps > MAX_STEPS:  # a shared server: one request must not hold the queue for hours
            raise ValueError(f"steps must be at most {MAX_STEPS}, got {settings.steps}")
        return settings

    def _run(self, job: Teleport, settings: Settings) -> Outcome:
        with self._lock:
            return generate(self.pipe, job, settings)

    def _save(self, image: np.ndarray, settings: Settings) -> str:
        """The result as a PNG in Gradio's (private, cleaned) cache folder, served and downloaded as is."""
        folder = self.upload_root / "results" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return str(write_image(folder / f"anydoor_seed{settings.seed}.png", image))

    def page_job(self, reference, ref_editor, mask_file, target, place, box_text, target_editor
                 ) -> tuple[Teleport, str]:
        """The job the page describes, and where the reference mask came from."""
        if reference is None:
            raise ValueError("no reference image: upload the object to teleport (step 1)")
        if target is None:
            raise ValueError("no target image: upload the scene to put the object in (step 2)")
        ref_mask, source = reference_mask(reference, painted_mask(ref_editor, reference.shape[:2], "reference"),
                                          mask_file)
        if place == "mask":
            mask = painted_mask(target_editor, target.shape[:2], "target")
            if mask is None:
                raise ValueError("target mask is empty: paint where the object goes, or choose 'box'")
            return Teleport(reference[..., :3], ref_mask, target, target_mask=mask), source
        box = parse_box(box_text)
        if box is None:
            raise ValueError("target has no box: click two corners on the target, or type x1 y1 x2 y2")
        return Teleport(reference[..., :3], ref_mask, target, box=check_box(box, target.shape[:2])), source

    def generate_clicked(self, reference, ref_editor, mask_file, target, place, box_text, target_editor, shape,
                         scheduler, steps, guidance, seed, random_seed, composite, feather,
                         progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="preparing")
        try:
            job, source = self.page_job(reference, ref_editor, mask_file, target, place, box_text, target_editor)
            settings = self._settings(shape, scheduler, steps, guidance, seed, random_seed, composite, feather)
            outcome = self._run(job, settings)
        except (ValueError, MemoryError) as err:
            raise _fail(err) from None
        path = self._save(outcome.image, settings)
        return (to_preview(outline(target, outcome.region)), to_preview(outcome.image),
                collage_picture(outcome.collage), self.summary(outcome, settings, source),
                describe(outcome, settings), gr.update(value=path, interactive=True))

    def api_generate(self, reference, reference_mask_file, target, box, target_mask_file, shape_control,
                     scheduler, steps, guidance, seed, random_seed, composite, feather):
        """Teleport an object: reference (RGBA, or RGB with a reference mask), target, and a box
        "x1 y1 x2 y2" or a target mask. Returns the result, the collage the model saw, and the numbers."""
        try:
            if reference is None or target is None:
                raise ValueError("give a reference and a target image")
            ref, mask_file, tgt, tmask = self.read_uploads(
                (reference, "reference", None), (reference_mask_file, "reference mask", "L"),
                (target, "target", "RGB"), (target_mask_file, "target mask", "L"))
            ref_mask, _ = reference_mask(ref, None, mask_file)
            if tmask is not None:
                job = Teleport(ref[..., :3], ref_mask, tgt, target_mask=(tmask > 127).astype(np.uint8))
            else:
                parsed = parse_box(box)
                if parsed is None:
                    raise ValueError("target has no box: give box 'x1 y1 x2 y2' or a target mask")
                job = Teleport(ref[..., :3], ref_mask, tgt, box=check_box(parsed, tgt.shape[:2]))
            settings = self._settings(shape_control, scheduler, steps, guidance, seed, random_seed, composite, feather)
            outcome = self._run(job, settings)
        except (ValueError, MemoryError) as err:
            raise _fail(err) from None
        return self._save(outcome.image, settings), collage_picture(outcome.collage), describe(outcome, settings)

    @staticmethod
    def summary(outcome: Outcome, s: Settings, mask_source: str) -> str:
        region = "nothing changed" if outcome.region is None else (
            f"changed region **{format_box(outcome.region)}** (x1 y1 x2 y2, "
            f"{outcome.region[2] - outcome.region[0]} x {outcome.region[3] - outcome.region[1]} px, outlined on the left)")
        steps = f"{s.steps} step{'s' if s.steps != 1 else ''}"
        location = {"mask": "mask shape", "box": "box"}[outcome.location]
        return (f"**Done in {outcome.seconds:.2f} s** · {region}\n\n"
                f"{s.scheduler}, {steps}, guidance {s.guidance:g}, seed {s.seed} · reference mask: {mask_source} · "
                f"location channel: {location} · pasted back: {s.composite}, feather {s.feather_px} px")

    # ------------------------------------------------------------------------------------ page

    def header(self) -> str:
        d = self.defaults
        where = "recommended by the model folder" if d.from_model else "built-in: the folder recommends none"
        limit = "no pixel limit" if self.max_pixels is None else f"images up to {self.max_pixels / 1e6:g} MP"
        return (f"# AnyDoor: teleport an object into a scene\n"
                f"Model `{html.escape(self.model_label)}` on {self.device_label}, {crop_size(self.pipe)} px crops · "
                f"defaults: {d.scheduler}, {d.steps} step{'s' if d.steps != 1 else ''}, guidance {d.guidance:g} "
                f"({where}) · {limit} · one generation at a time, others wait in the queue")

    def build(self, delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
        d = self.defaults
        with gr.Blocks(title="AnyDoor demo", analytics_enabled=False, delete_cache=delete_cache) as blocks:
            gr.Markdown(self.header(), elem_id="header")
            reference_state, mask_state, target_state, corner_state = (gr.State(None) for _ in range(4))
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    gr.Markdown("### 1 · Reference object")
                    reference = _upload("Reference: a cut-out PNG's transparency is its mask", "reference")
                    ref_editor = _editor("…or paint over the object", "reference-paint",
                                         "Upload a reference above, then paint over the object here")
                    with gr.Accordion("…or upload a mask file (white = object)", open=False):
                        mask_file = _upload("Reference mask", "reference-mask", height=180)
                with gr.Column(scale=1):
                    gr.Markdown("### 2 · Target scene")
                    target = _upload("Target: click two corners to draw the box", "target", height=340)
                    place = gr.Radio([("box", "box"), ("painted mask", "mask")], value="box",
                                     label="Place the object in", elem_id="place")
                    box = gr.Textbox(label="Box: x1 y1 x2 y2 (pixels, exclusive ends; Enter to show it)",
                                     elem_id="box", placeholder="e.g. 120 80 360 330")
                    target_editor = _editor("Paint where the object goes", "target-paint",
                                            "Upload a target above, then paint here", visible=False)
                    shape = gr.Checkbox(False, label="Shape control: the model gets the mask's shape, not only its box",
                                        elem_id="shape", visible=False)
                with gr.Column(scale=1):
                    gr.Markdown("### 3 · Settings")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label="Sampler (ddim: the authors'; "
                                            "dpm: DPM-Solver++ 2M)", elem_id="scheduler")
                    steps = gr.Slider(1, 100, value=d.steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(1, 15, value=d.guidance, step=0.5, label="Guidance (1 = off)",
                                         elem_id="guidance")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                        random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
                    composite = gr.Radio(COMPOSITE_CHOICES, value="box", label="Paste back", elem_id="composite")
                    feather = gr.Slider(0, 32, value=default_feather("box"), step=1, label="Feather (px): a soft "
                                        "seam inside the pasted region", elem_id="feather")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
            gr.Markdown("### Result")
            info = gr.Markdown("The result appears here.", elem_id="info")
            with gr.Tabs():
                with gr.Tab("Before / after"):
                    with gr.Row():
                        before = _picture("Before: the target, changed region outlined", "before", interactive=False)
                        after = _picture("After", "after", interactive=False)
                with gr.Tab("What the model saw"):
                    collage = _picture("Collage: target crop with the object's details | location channel",
                                       "collage", interactive=False)
                with gr.Tab("Numbers"):
                    details = gr.JSON(label="Numbers of the last generation", elem_id="details")
            download = gr.DownloadButton("Download the result (PNG)", elem_id="download", interactive=False)
            with gr.Column(visible=False):  # the API's own inputs: files instead of page state
                api_inputs = [_upload(f"api {n}", f"api-{n}") for n in ("reference", "reference-mask", "target",
                                                                           "target-mask")]
                api_trigger = gr.Button(visible=False)

            reference.upload(self.reference_uploaded, reference, [reference, reference_state, ref_editor],
                             preprocess=False, **LIGHT)
            reference.clear(lambda: (None, None), None, [reference_state, ref_editor], **LIGHT)
            mask_file.upload(self.mask_file_uploaded, mask_file, [mask_file, mask_state], preprocess=False, **LIGHT)
            mask_file.clear(lambda: None, None, mask_state, **LIGHT)
            target.upload(self.target_uploaded, target, [target, target_state, box, corner_state, target_editor],
                          preprocess=False, **LIGHT)
            target.clear(lambda: (None, "", None, None), None, [target_state, box, corner_state, target_editor],
                         **LIGHT)
            target.select(self.target_clicked, [target_state, corner_state], [target, box, corner_state], **LIGHT)
            gr.on([box.submit, box.blur], self.box_typed, [target_state, box], [target, corner_state], **LIGHT)
            place.change(self.place_changed, place, [box, target_editor, shape], **LIGHT)
            scheduler.input(self.scheduler_changed, scheduler, steps, **LIGHT)
            composite.input(default_feather, composite, feather, **LIGHT)  # each mode's default seam
            settings = [shape, scheduler, steps, guidance, seed, random_seed, composite, feather]
            run.click(self.generate_clicked,
                      [reference_state, ref_editor, mask_state, target_state, place, box, target_editor, *settings],
                      [before, after, collage, info, details, download], api_visibility="private", **MODEL_QUEUE)
            api_trigger.click(self.api_generate, [api_inputs[0], api_inputs[1], api_inputs[2], box, api_inputs[3],
                                                  *settings],
                              [after, collage, details], api_name="generate", preprocess=False, **MODEL_QUEUE)
        return blocks
