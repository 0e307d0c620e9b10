"""At archive time: what each way of serving the archive costs against the float32 answers, on
the user's own photos (handlers/model/verification.py holds the record the archive carries).

The reference is the eager float32 model on the exact pixels (the library's eval transform).
Every candidate the archive's settings allow on this host (backend and precision, on the pixel
path the archive serves) runs the same photos; it passes when its top-1 agrees on at least
`min_agreement` of them and it also passes the load-time check on the reference photos. An
archive whose settings change the answers (a reduced precision, `pixels: fast`) and where no
candidate passes is refused, with the numbers.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from handlers.model.engine import REDUCED
from handlers.model.recipe import Recipe, normalize
from handlers.model.reference import ReferenceSet
from handlers.model.selection import Candidate, builder, hardware_candidates, wanted
from handlers.model.verification import Agreement, VerificationRecord
from handlers.request.pixels import image_pixels
from handlers.settings import Settings
from modeltools.serving_extras import MAX_PIXELS, image_files

MAX_VERIFY_IMAGES = 2000
CHUNK = 64  # images decoded and run at once


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def photo_pixels(files: list[Path], recipe: Recipe, fast: bool) -> torch.Tensor:
    """uint8 [N, 3, H, W] of `files` on the exact or the fast pixel path."""
    return torch.stack([image_pixels(f.read_bytes(), MAX_PIXELS, recipe, fast) for f in files])


def float32_logits(model: torch.nn.Module, pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat(
            [model(normalize(pixels[i : i + CHUNK], recipe)).float() for i in range(0, len(pixels), CHUNK)]
        )


def candidates_for(settings: Settings, device: torch.device, has_onnx: bool, has_int8: bool) -> list[Candidate]:
    """What the archive may serve with on this host, as its settings allow (auto: float32)."""
    return wanted(hardware_candidates(device, has_onnx, has_int8)[0], settings.engine_options())


def measure(
    settings: Settings,
    recipe: Recipe,
    model: torch.nn.Module,
    build_torch: Callable[[], torch.nn.Module],
    folder: Path,
    reference: ReferenceSet,
    onnx_path: Path | None,
    int8_path: Path | None = None,
    calibration: Path | None = None,
) -> VerificationRecord:
    """The verification record of an archive with these settings; with precision int8, also
    writes `int8_path` (the best of modeltools/quantize.py's variants). ValueError when the
    settings change the answers and nothing keeps min_agreement."""
    files = image_files(folder)[:MAX_VERIFY_IMAGES]
    if not files:
        raise ValueError(f"no photos in {folder} to verify on (--verify-images names a folder)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _say(f"verifying on {len(files)} photos of {folder} (pixels {settings.pixels}, precision {settings.precision})")
    exact = photo_pixels(files, recipe, fast=False)
    expected = float32_logits(model, exact, recipe)
    served = photo_pixels(files, recipe, fast=True) if settings.fast_pixels else exact
    record = VerificationRecord(len(files), settings.min_agreement, settings.pixels, source=Path(folder).name)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if settings.precision == "int8":
            _make_int8(settings, recipe, model, build_torch, reference, onnx_path, int8_path, calibration,
                       served, expected, record, device, work)  # fmt: skip
        else:
            run = _runner(settings, recipe, build_torch, onnx_path, None, device, work)
            for candidate in candidates_for(settings, device, onnx_path is not None, False):
                record.candidates[candidate.label] = _measure_one(run, candidate, served, expected, reference, record)
    _refuse_unless_kept(settings, record)
    return record


def _runner(settings, recipe, build_torch, onnx_path, int8_path, device, work):
    return builder(recipe, device, 8, settings.engine_options(), build_torch, onnx_path, work / "engine", None,
                   int8_path)  # fmt: skip


def _measure_one(build, candidate: Candidate, served, expected, reference: ReferenceSet, record) -> dict:
    try:
        engine = build(candidate)
        try:
            logits = torch.cat([engine.run(served[i : i + CHUNK]).logits for i in range(0, len(served), CHUNK)])
            verdict = reference.judge(engine.run(reference.pixels).logits, candidate.precision)
        finally:
            engine.close()
    except Exception as exc:  # a runtime that cannot run this model here: recorded, never served
        return {"error": f"{type(exc).__name__}: {exc}"[:300], "passed": False}
    agreement = Agreement.of(expected, logits)
    passed = agreement.agreement >= record.min_agreement and verdict.verified
    _say(f"  {candidate.label}: {agreement.summary()}{'' if verdict.verified else '; fails the reference photos'}")
    return {**agreement.to_dict(), "reference_photos_verified": verdict.verified, "passed": passed}


def _make_int8(settings, recipe, model, build_torch, reference, onnx_path, int8_path, calibration, served,
               expected, record, device, work) -> None:  # fmt: skip
    """Each way of quantizing measured; the one whose best candidate agrees most is kept."""
    from modeltools.quantize import calibration_pixels, quantize, variants

    if onnx_path is None:
        raise ValueError("precision int8 quantizes the archive's ONNX file, and this archive has none")
    pixels = calibration_pixels(calibration, recipe)
    best = None
    for described, float32_layers in variants(onnx_path).items():
        path = work / f"int8-{len(float32_layers)}.onnx"
        _say(f"int8: quantizing ({described}), calibrated on {len(pixels)} crops of {calibration}")
        quantize(onnx_path, path, pixels, float32_layers)
        run = _runner(settings, recipe, build_torch, onnx_path, path, device, work / path.stem)
        measured = {
            c.label: _measure_one(run, c, served, expected, reference, record)
            for c in candidates_for(settings, device, True, True)
        }
        score = max((m.get("top1_agree", -1) for m in measured.values()), default=-1)
        if best is None or score > best[0]:
            best = (score, path, measured, described, float32_layers)
    _, path, record.candidates, described, float32_layers = best
    shutil.copy(path, int8_path)
    record.int8 = {"calibration_images": len(pixels), "calibration_source": Path(calibration).name,
                   "quantized": described, "float32_layers": float32_layers}  # fmt: skip


def _refuse_unless_kept(settings: Settings, record: VerificationRecord) -> None:
    if not settings.changes_answers or any(e.get("passed") for e in record.candidates.values()):
        return
    what = f"precision {settings.precision}" if settings.precision in REDUCED else ""
    what = " and ".join(x for x in (what, "pixels fast" if settings.fast_pixels else "") if x)
    lines = [
        f"{label}: top-1 agreement {e['top1_agreement']} (Wilson 95% lower bound {e['top1_agreement_lower_95']}), "
        f"largest change of the top-1 probability {e['max_top1_prob_change']}"
        if "error" not in e
        else f"{label}: {e['error']}"
        for label, e in record.candidates.items()
    ] or ["nothing on this host runs it"]
    raise ValueError(
        f"{what} keeps the float32 answers on fewer than min_agreement {settings.min_agreement} of "
        f"{record.images} verification photos:\n  " + "\n  ".join(lines) + "\n"
        "Not archived. Serve the float32 answers (the default), or, if that agreement is acceptable, "
        "lower it with --set handler.min_agreement=..."
    )
