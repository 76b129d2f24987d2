"""The bad-input table: every case the command line refuses, the command that meets it and its exact message.

One table drives two things:

* ``tests/test_bad_input.py`` builds each case's files, runs its command and checks the exit status (2),
  that no traceback is printed, that nothing was written, and that stderr is exactly ``error: `` + the
  message below (paths are relative to the folder the command runs in: ``DATA`` is a dataset folder,
  ``RUN`` a run folder);
* the book's Troubleshooting appendix (``book/troubleshooting.md``), rendered by :func:`render_markdown`;
  a test checks that the committed page equals the rendering, so the page always shows the messages the
  code produces. Regenerate it with ``python -m diffseg_core.troubleshooting > book/troubleshooting.md``.

Messages that name a process (a lock held by a live run) hold ``PID``, ``HOST`` and ``TIME`` where the
real message has the process id, host name and start time.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BadInput", "CASES", "GROUPS", "render_markdown"]

TRAIN = "python -m diffseg_core train"
EVALUATE = "python -m diffseg_core evaluate"
MONUSEG = f"{TRAIN} --method unet --dataset monuseg --data DATA --preset smoke --out RUN"
CXR = f"{TRAIN} --method unet --dataset cxr --data DATA --preset smoke --out RUN"
HIPPO = f"{TRAIN} --method unet --dataset hippocampus --data DATA --preset smoke --out RUN"


@dataclass(frozen=True)
class BadInput:
    """One row: ``id`` (the test's name), ``group``, ``title`` (the situation), ``setup`` (what the folder
    holds, in words), ``command`` (as typed, in the folder holding DATA and RUN), ``message`` (exactly
    what follows ``error: `` on stderr) and the exit ``status``."""

    id: str
    group: str
    title: str
    setup: str
    command: str
    message: str
    status: int = 2


GROUPS: tuple[str, ...] = ("Images", "Masks", "Folders and case lists", "NIfTI volumes", "Text", "Options",
                           "Run folders and checkpoints")

CASES: tuple[BadInput, ...] = (
    # ---- images -------------------------------------------------------------------------------
    BadInput("image-truncated", "Images", "A PNG cut short",
             "`DATA/images/a.png` lost the second half of its bytes (an interrupted copy).", MONUSEG,
             "DATA/images/a.png: the image data are truncated or corrupt (the header reads, the pixels do not); copy or "
             "export it again, or remove it (and its mask or image)"),
    BadInput("image-corrupt-tiff", "Images", "A file that is not an image",
             "`DATA/images/a.tif` holds text, not TIFF data.", MONUSEG,
             "DATA/images/a.tif: cannot read the file as an image (it is not a PNG, JPEG, TIFF or BMP image, or its "
             "header is corrupt); re-export it as PNG, or remove it (and its mask or image)"),
    BadInput("image-empty", "Images", "A zero-byte image", "`DATA/images/a.png` is empty (0 bytes).", MONUSEG,
             "DATA/images/a.png: the file is empty (0 bytes); copy it again from the dataset's source, or remove it "
             "(and its mask or image)"),
    BadInput("image-rgba", "Images", "An RGBA image with transparent pixels",
             "`DATA/images/a.png` has an alpha channel with transparent pixels.", MONUSEG,
             "DATA/images/a.png: the image has transparent pixels (an alpha channel that is not fully opaque); flatten "
             "it onto a background and save it without alpha (RGB or grayscale PNG)"),
    BadInput("image-16bit", "Images", "A 16-bit image", "`DATA/images/a.png` is a 16-bit grayscale X-ray.", CXR,
             "DATA/images/a.png: 16-bit pixels (PIL mode I;16); the loaders read 8-bit images. Convert it to 8 bits "
             "(rescale by its own maximum so the contrast is kept) and save it as PNG"),
    BadInput("image-grey-for-rgb", "Images", "A grayscale image where RGB is expected",
             "`DATA/images/a.png` is grayscale in a MoNuSeg (H&E, RGB) folder.", MONUSEG,
             "DATA/images/a.png: expected an RGB image (3 channels), got a grayscale one (PIL mode L); this dataset "
             "needs colour images. Check that the file belongs to this dataset (is --dataset right?), or save it as "
             "RGB if it really is a colour image stored as grey"),
    BadInput("image-rgb-for-grey", "Images", "A colour image where grayscale is expected",
             "`DATA/images/a.png` is a colour photograph in a chest X-ray folder.", CXR,
             "DATA/images/a.png: expected a grayscale image, got a colour one (its red, green and blue channels "
             "differ); this dataset needs grayscale X-rays. Check that the file belongs to this dataset (is --dataset "
             "right?), or convert it to grayscale if it is an X-ray"),
    BadInput("image-tiny", "Images", "An image of 8 x 8 pixels", "`DATA/images/a.png` (and its mask) is 8 x 8 pixels.",
             MONUSEG,
             "DATA/images/a.png: 8 x 8 pixels is too small to segment (the smallest side accepted is 10 pixels); is it "
             "a thumbnail or the wrong file? Replace it with the full image or remove it (and its mask or image)"),
    BadInput("image-huge", "Images", "An image of 10 000 x 10 000 pixels",
             "`DATA/images/a.png` declares 10 000 x 10 000 pixels in its header; it is refused from the header, "
             "before any pixel is decoded, so memory stays bounded (the limit is 40 megapixels: about 1.2 GB at "
             "most while one image is loaded).", MONUSEG,
             "DATA/images/a.png: 10000 x 10000 pixels (100 megapixels) is more than the 40-megapixel limit, refused "
             "before decoding to keep memory bounded; downscale it, or cut it into tiles (e.g. 1000 x 1000) and load "
             "those"),
    # ---- masks --------------------------------------------------------------------------------
    BadInput("mask-values", "Masks", "Mask values outside the expected set",
             "`DATA/masks/a.png` holds the labels 0, 1 and 2 in a binary task.", MONUSEG,
             "DATA/masks/a.png: the mask is not binary: it holds the values 0, 1, 2, where a binary mask holds 0 for "
             "background and one foreground value (e.g. 255). If it is a multi-class label map, merge the classes this "
             "task needs (e.g. pixel > 0) and save it as PNG"),
    BadInput("mask-jpeg", "Masks", "A mask with grey levels from JPEG compression",
             "`DATA/masks/a.png` went through JPEG compression: its edges hold many grey levels.", MONUSEG,
             "DATA/masks/a.png: the mask is not binary: it has 12 grey levels, typical of JPEG compression or of "
             "resizing with interpolation. Masks must be stored losslessly: threshold it (e.g. pixel > 127) and save "
             "it as PNG"),
    BadInput("mask-size", "Masks", "A mask of another size than its image",
             "`DATA/masks/a.png` is 24 x 20 pixels, its image 24 x 24.", MONUSEG,
             "DATA/masks/a.png: label size (24, 20) differs from its image DATA/images/a.png (24, 24); image and label "
             "must be pixel-aligned: export the label at the image's size, or remove the pair"),
    BadInput("mask-missing", "Masks", "An image without a mask", "`DATA/images/d.png` has no mask in `DATA/masks`.",
             MONUSEG,
             "DATA/images/d.png: no mask found in DATA/masks (looked for d.png); every image needs its mask: "
             "add it or remove the image"),
    BadInput("mask-orphan", "Masks", "A mask without an image", "`DATA/masks/z.png` has no image in `DATA/images`.",
             MONUSEG,
             "DATA/masks/z.png: a mask without an image (1 such file(s) in DATA/masks; no image in DATA/images matches "
             "it); add its image or remove the mask"),
    BadInput("mask-all-background", "Masks", "All-background masks in every training image",
             "Every mask of the training split is empty (all 0).", MONUSEG,
             "DATA: every training mask is empty (all background in 1 of 1 training images), so a model could only "
             "learn to predict background; check that the masks mark the structure with values above 0, and that "
             "--dataset is right"),
    BadInput("mask-lesion-folder", "Masks", "The lesion target without a lesion_masks/ folder",
             "`DATA` is a chest X-ray folder with `images/` and `masks/` (the lungs) only.", f"{CXR} --target lesion",
             "DATA/lesion_masks: no such folder; the lesion target needs a lesion_masks/ folder next to images/ with one "
             "mask per image (all black where an image has no lesion): add it, or leave --target out to segment the "
             "lungs"),
    BadInput("mask-lesion-no-lung", "Masks", "The lesion target with an image that has no lung mask",
             "`DATA/lesion_masks/` has a mask for every image, but `DATA/masks/b.png` (the lung mask of `b`, which the "
             "generated report needs for sides and zones) is missing.", f"{CXR} --target lesion",
             "DATA/images/b.png: no lung mask found in DATA/masks (looked for b.png); the lesion target needs it for the "
             "report's sides and zones: add it or remove the image"),
    # ---- folders ------------------------------------------------------------------------------
    BadInput("folder-empty", "Folders and case lists", "An empty dataset folder", "`DATA` exists but is empty.",
             MONUSEG,
             "DATA: the folder is empty; copy the monuseg dataset into it (layouts and downloads in data/README.md), "
             "or point --data at the folder that holds it"),
    BadInput("folder-missing", "Folders and case lists", "A dataset folder that does not exist",
             "There is no folder `DATA`.", MONUSEG,
             "--data DATA: no monuseg dataset found there (no such folder); pass the dataset folder, see "
             "data/README.md for the expected layouts"),
    BadInput("folder-wrong-layout", "Folders and case lists", "A folder in the wrong layout",
             "`DATA` holds `scans/` and `labels.txt`, none of the MoNuSeg layouts.", MONUSEG,
             "DATA: unknown MoNuSeg layout; expected images/ + masks/, LViT Train_Folder/img + labelcol, or the "
             "official 'Tissue Images/' + 'Annotations/': point --data at the dataset folder itself (see "
             "data/README.md)"),
    BadInput("folder-two-layouts", "Folders and case lists", "A dataset folder holding two layouts at once",
             "`DATA` holds `images/` + `masks/` and an LViT `Train_Folder/`.", MONUSEG,
             "DATA: holds two MoNuSeg layouts at once (images/ + masks/ and LViT Train_Folder/ + Test_Folder/); keep "
             "one of them in this folder (move the other elsewhere), so it is clear which images to use"),
    BadInput("cases-unknown-split", "Folders and case lists", "cases.csv with an unknown split name",
             "`DATA/cases.csv` gives case `a` the split `training`.", MONUSEG,
             "DATA/cases.csv: case a has split 'training'; the split column takes train, val or test (or stays empty "
             "for a seeded split)"),
    BadInput("cases-unknown-id", "Folders and case lists", "cases.csv with ids that match no file",
             "`DATA/cases.csv` has a row for `ghost`, which is not in `DATA/images`.", MONUSEG,
             "DATA/cases.csv: 1 id(s) match no file in DATA/images (ghost); fix the ids (file names without extension) "
             "or remove those rows"),
    BadInput("cases-duplicate-id", "Folders and case lists", "cases.csv with duplicate ids",
             "`DATA/cases.csv` has two rows for case `a`.", MONUSEG,
             "DATA/cases.csv: the id a is on 2 rows (1 duplicated id(s)); each case must have exactly one row: remove "
             "the duplicates"),
    # ---- NIfTI --------------------------------------------------------------------------------
    BadInput("nifti-2d", "NIfTI volumes", "A 2-D image instead of a volume",
             "`DATA/images/hippocampus_001.nii.gz` holds one 12 x 12 slice.", HIPPO,
             "DATA/images/hippocampus_001.nii.gz: a 2-D image of shape (12, 12); this loader needs 3-D volumes (X, Y, "
             "Z): export the whole volume, not a single slice"),
    BadInput("nifti-4d", "NIfTI volumes", "A 4-D volume",
             "`DATA/images/hippocampus_001.nii.gz` holds two channels (12 x 12 x 6 x 2).", HIPPO,
             "DATA/images/hippocampus_001.nii.gz: a 4-D volume of shape (12, 12, 6, 2); this loader needs one 3-D "
             "volume per file: keep one channel or time point, or split them into separate files"),
    BadInput("nifti-labels", "NIfTI volumes", "Label values outside {0, 1, 2}",
             "`DATA/labels/hippocampus_001.nii.gz` holds the value 3.", HIPPO,
             "DATA/labels/hippocampus_001.nii.gz: label values [3] are outside the expected set [0, 1, 2]; check that it "
             "is this dataset's label map (not a probability map or the labels of another task) and re-export it"),
    BadInput("nifti-shape", "NIfTI volumes", "Image and label of different shapes",
             "`DATA/labels/hippocampus_001.nii.gz` has 5 slices, its image 6.", HIPPO,
             "DATA/labels/hippocampus_001.nii.gz: label size (12, 12, 5) differs from its image "
             "DATA/images/hippocampus_001.nii.gz (12, 12, 6); image and label must be pixel-aligned: export the label "
             "at the image's size, or remove the pair"),
    BadInput("nifti-affine", "NIfTI volumes", "Image and label with different affines",
             "`DATA/labels/hippocampus_001.nii.gz` was saved with 2 mm voxels, its image with 1 mm.", HIPPO,
             "DATA/labels/hippocampus_001.nii.gz: its affine (voxel-to-world matrix) differs from that of its image "
             "DATA/images/hippocampus_001.nii.gz; the label was saved in another space or orientation: resample it onto "
             "the image (e.g. MONAI's ResampleToMatch) or export both again from the same source"),
    BadInput("nifti-gzip", "NIfTI volumes", "A gzip-corrupted .nii.gz",
             "`DATA/images/hippocampus_001.nii.gz` lost the end of its gzip stream.", HIPPO,
             "DATA/images/hippocampus_001.nii.gz: cannot read the file as NIfTI (the gzip stream is corrupt or "
             "truncated); download or export it again, or remove it together with its image or label"),
    # ---- text ---------------------------------------------------------------------------------
    BadInput("text-missing-row", "Text", "No text row for an image",
             "`DATA/text.csv` has no row for image `c`.", MONUSEG,
             "DATA/text.csv: no sentence for 1 of 3 images (c); add a row for each image, or remove the table to load "
             "the images without text"),
    BadInput("text-empty", "Text", "An empty sentence", "`DATA/text.csv` gives image `b` an empty sentence.", MONUSEG,
             "DATA/text.csv: the sentence for b is empty; write the image's description, or remove the table to load "
             "the images without text"),
    BadInput("text-columns", "Text", "A text table with the wrong columns",
             "`DATA/Train_Folder/Train_text.xlsx` (LViT layout) has the columns `Name` and `Text`.", MONUSEG,
             "DATA/Train_Folder/Train_text.xlsx: the text table needs the columns 'Image' and 'Description', found "
             "['Name', 'Text']; rename its columns (see data/README.md for each layout's table)"),
    BadInput("text-encoding", "Text", "A text table that is not UTF-8", "`DATA/text.csv` is saved as Latin-1.",
             MONUSEG,
             "DATA/text.csv: the text table is not UTF-8 text; save it again with UTF-8 encoding (e.g. 'CSV UTF-8' in a "
             "spreadsheet program)"),
    # ---- options ------------------------------------------------------------------------------
    BadInput("option-unknown-method", "Options", "An unknown method", "", f"{TRAIN} --method segformer --dataset "
             "synthetic --out RUN",
             "argument --method: invalid choice: 'segformer' (choose from 'unet', 'cdal', 'segdiff', 'textdiff'); see `python -m "
             "diffseg_core train --help` for the options"),
    BadInput("option-unknown-dataset", "Options", "An unknown dataset", "", f"{TRAIN} --method unet --dataset liver "
             "--out RUN",
             "argument --dataset: invalid choice: 'liver' (choose from 'monuseg', 'cxr', 'hippocampus', 'qata', "
             "'synthetic'); see `python -m diffseg_core train --help` for the options"),
    BadInput("option-unknown-preset", "Options", "An unknown preset", "", f"{TRAIN} --method unet --dataset synthetic "
             "--preset huge --out RUN",
             "argument --preset: invalid choice: 'huge' (choose from 'smoke', 'cpu', 'gpu', 'paper', 'auto'); see "
             "`python -m diffseg_core train --help` for the options"),
    BadInput("option-wrong-method", "Options", "A method option given to another method", "",
             f"{TRAIN} --method unet --dataset synthetic --preset smoke --out RUN --no-latent",
             "--no-latent is a cdal option; it does not apply to --method unet: leave it out, or use --method cdal"),
    BadInput("option-train-images", "Options", "--train-images larger than the training split",
             "`DATA` is a MoNuSeg folder whose training split has one image.",
             f"{TRAIN} --method textdiff --dataset monuseg --data DATA --preset smoke --out RUN --train-images 50",
             "--train-images 50: the training split of DATA has only 1 image(s); use --train-images 1 or fewer"),
    BadInput("option-timesteps-zero", "Options", "--timesteps 0", "",
             f"{TRAIN} --method cdal --dataset synthetic --preset smoke --out RUN --timesteps 0",
             "argument --timesteps: invalid choice: 0 (choose from 1, 2, 3, 4, 5, 6, 8); see `python -m diffseg_core "
             "train --help` for the options"),
    BadInput("option-steps-zero", "Options", "--steps 0", "",
             f"{TRAIN} --method unet --dataset synthetic --preset smoke --out RUN --steps 0",
             "--steps 0: must be at least 1; give the number of training steps, or leave it out for the preset's"),
    BadInput("option-target-other-dataset", "Options", "--target for a dataset without a choice of target",
             "`DATA` is a MoNuSeg folder.", f"{MONUSEG} --target lesion",
             "--target lesion: only --dataset cxr offers a choice of target (lung or lesion; --dataset synthetic gives "
             "their offline stand-ins); leave --target out for --dataset monuseg"),
    BadInput("option-text-tokens-one", "Options", "--text-tokens below 2", "",
             f"{TRAIN} --method textdiff --dataset synthetic --preset smoke --out RUN --text-tokens 1",
             "--text-tokens 1: must be at least 2; give a number of 2 or more, or leave it out for the preset's value"),
    BadInput("option-data-missing", "Options", "No --data for a real dataset",
             "Neither --data nor DIFFSEG_DATA is set.", f"{TRAIN} --method unet --dataset monuseg --preset smoke --out RUN",
             "--data is required for --dataset monuseg; pass the dataset folder (or set DIFFSEG_DATA)"),
    BadInput("option-out-unwritable", "Options", "An unwritable --out", "`FILE` is a file, so no folder can be made "
             "under it.", f"{TRAIN} --method unet --dataset synthetic --preset smoke --out FILE/run",
             "FILE/run: cannot create the run folder (--out) there, FILE is a file, not a folder; choose another --out"),
    BadInput("option-out-holds-run", "Options", "--out already holding a run, without --resume",
             "`RUN` holds a finished run.", MONUSEG,
             "--out RUN: already holds a run (last.pt, best.pt, config.json, run.json, history.json); continue it with "
             "--resume, or choose another --out (delete the folder to start that run again)"),
    BadInput("option-resume-no-checkpoint", "Options", "--resume on a folder with no checkpoint",
             "There is no `RUN/last.pt`.", f"{MONUSEG} --resume",
             "--resume: RUN has no checkpoint last.pt to resume from; train into it without --resume, or resume the "
             "folder you meant"),
    BadInput("evaluate-other-kind", "Options", "evaluate of a run on a dataset of another kind",
             "`RUN` is a MoNuSeg run; `VOLUMES` holds Hippocampus NIfTI volumes.",
             f"{EVALUATE} --run RUN --data VOLUMES --split all --json OUT.json",
             "--data VOLUMES: holds a hippocampus dataset, but RUN is a monuseg run; evaluate it on a monuseg folder, "
             "or evaluate a hippocampus run on this one"),
    BadInput("evaluate-channels", "Options", "evaluate with another number of channels or classes",
             "`RUN` was trained (from Python) as a chest X-ray run on 3-channel synthetic tiles; `DATA` holds 1-channel "
             "X-rays.", f"{EVALUATE} --run RUN --data DATA --split all --json OUT.json",
             "RUN: the model takes 3-channel images and predicts 2 classes, but the cxr data at DATA have 1-channel "
             "images and 2 classes; evaluate it on data of the kind it was trained on"),
    BadInput("evaluate-limit-zero", "Options", "evaluate --limit 0", "`RUN` holds a finished run.",
             f"{EVALUATE} --run RUN --data DATA --json OUT.json --limit 0",
             "--limit 0: must be at least 1; leave it out to score every image"),
    BadInput("evaluate-not-a-run", "Options", "evaluate of a folder that is not a run", "`RUN` exists but is empty.",
             f"{EVALUATE} --run RUN --data DATA --json OUT.json",
             "--run RUN: not a run folder (no config.json or best.pt in it); pass the --out folder of a train command"),
    # ---- run folders and checkpoints ----------------------------------------------------------
    BadInput("checkpoint-truncated", "Run folders and checkpoints", "A truncated checkpoint",
             "`RUN/best.pt` lost its second half.", f"{EVALUATE} --run RUN --data DATA --json OUT.json",
             "RUN/best.pt: checkpoint is truncated or corrupt and cannot be read; use the run's other checkpoint "
             "(evaluate --checkpoint best|last) or train again"),
    BadInput("checkpoint-other-method", "Run folders and checkpoints", "A checkpoint from another method",
             "`RUN/best.pt` was copied from a cDAL run into a U-Net run folder.",
             f"{EVALUATE} --run RUN --data DATA --json OUT.json",
             "RUN/best.pt: holds a cdal checkpoint, but RUN/config.json describes a unet run; the folder mixes two runs: "
             "evaluate the folder each came from, or train again into an empty --out"),
    BadInput("resume-other-method", "Run folders and checkpoints", "--resume with another method",
             "`RUN` holds a U-Net run.",
             f"{TRAIN} --method cdal --dataset monuseg --data DATA --preset smoke --out RUN --resume",
             "RUN/last.pt: holds a unet run, so it cannot be resumed with --method cdal; resume it with --method unet, "
             "or train cdal into another --out"),
    BadInput("resume-other-settings", "Run folders and checkpoints", "--resume with other settings",
             "`RUN` was trained with --seed 0.", f"{MONUSEG} --resume --seed 1",
             "RUN/last.pt: was trained with other settings (seed: 0 (saved) vs 1 (now)); resume with the options it was "
             "trained with (only --steps and --minutes may change), or train into another --out"),
    BadInput("resume-other-data", "Run folders and checkpoints", "--resume on other data",
             "The images in `DATA` changed since `RUN` was trained on it.", f"{MONUSEG} --resume",
             "RUN/last.pt: was trained on training images of the same names as, but other pixels than, the data given "
             "now; resume with the --data it was trained on, or train into another --out"),
    BadInput("config-unknown-keys", "Run folders and checkpoints", "A config with unknown keys from a newer version",
             "`RUN/config.json` has a setting `data.tile_cache` this version does not know.",
             f"{EVALUATE} --run RUN --data DATA --json OUT.json",
             "RUN/config.json: unknown setting(s) data.tile_cache; this config was probably written by a newer version "
             "of diffseg: upgrade diffseg (pip install -U -e . in its checkout), or remove these keys to run it with "
             "this version"),
    BadInput("run-locked", "Run folders and checkpoints", "Two runs into the same --out",
             "Another live process holds `RUN/.lock`.", f"{MONUSEG} --resume",
             "RUN: another training run is writing into this folder (pid PID on HOST, started TIME); wait for it to "
             "finish or choose another --out. If no such run is going, delete RUN/.lock and try again"),
)


def render_markdown() -> str:
    """The Troubleshooting appendix (``book/troubleshooting.md``) from :data:`CASES`."""
    out = ["(troubleshooting)=",
           "# Troubleshooting: every refused input and its message",
           "",
           "<!-- Generated from diffseg_core/troubleshooting.py by `python -m diffseg_core.troubleshooting > "
           "book/troubleshooting.md`; tests/test_bad_input.py runs every case below and checks its message. -->",
           "",
           "The command line checks its input before it writes anything. When something is wrong it prints **one "
           "paragraph** that names the file or the option, says what is wrong and what to do, exits with status "
           "**2**, prints no Python traceback, and leaves nothing half-written behind: no run folder, no JSON, no "
           "checkpoint. Each case below shows a command (run in a folder holding `DATA`, a dataset folder, and `RUN`, "
           "a run folder) and the message it prints; the test suite (`tests/test_bad_input.py`) builds every case, "
           "runs its command and checks that the message is exactly the one shown here.",
           "",
           "Two failures are not bad input and exit with status **1**: a loss that becomes NaN (the message names the "
           "step and the last good checkpoint) and a disk that fills up while a checkpoint is written (the previous "
           "checkpoint stays intact; free space and continue with `--resume`).",
           "",
           f"There are {len(CASES)} cases in {len(GROUPS)} groups.",
           ""]
    for group in GROUPS:
        rows = [c for c in CASES if c.group == group]
        out += [f"## {group}", ""]
        for c in rows:
            out += [f"### {c.title}", ""]
            if c.setup:
                out += [c.setup, ""]
            out += ["```text", f"$ {c.command}", f"error: {c.message}", "```", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # python -m diffseg_core.troubleshooting > book/troubleshooting.md
    print(render_markdown(), end="")
