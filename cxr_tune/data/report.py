"""Readable text reports of a data source: what ``inspect`` and ``prepare`` print."""

from __future__ import annotations

import os

import pandas as pd

from cxr_tune.data.prepared import SplitData
from cxr_tune.data.sources import CLASSES, FOLDER_PATIENT, IMAGE_PATIENT, SPLITS
from cxr_tune.data.splits import leakage
from cxr_tune.formatting import printable

MAX_LISTED = 30


def summary_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per split and class: images, patients, groups, duplicate files, size range and modes."""
    frame = manifest.assign(
        **{"class": manifest["label"].map(dict(enumerate(CLASSES)))},
        duplicated=manifest.duplicated("content_hash", keep=False),
    )
    rows = []
    for (split, name), part in frame.groupby(["split", "class"], sort=True):
        rows.append({
            "split": split,
            "class": name,
            "images": len(part),
            "patients": part["patient_id"].nunique(),
            "groups": part["group_id"].nunique(),
            "duplicate files": int(part["duplicated"].sum()),
            "width min/median/max": _spread(part["width"]),
            "height min/median/max": _spread(part["height"]),
            "modes": ", ".join(f"{m} {c}" for m, c in part["mode"].value_counts().items()),
        })
    return pd.DataFrame(rows)


def inspect_report(split: SplitData) -> str:
    """The full ``inspect`` text: counts, duplicates, patient ids, leakage and what is done about it,
    the roles every image gets with these options, and the skipped files."""
    source, roles = split.source, split.roles
    manifest = source.manifest
    lines = [f"Data: {source.description}", ""]
    lines += [summary_table(manifest).to_markdown(index=False), ""]
    lines.append(_duplicates_line(manifest))
    lines.append(unnamed_report(manifest))
    lines.append(numbering_report(manifest))
    lines.append(leakage_report(roles))
    lines += ["", split.describe_external("external", left_out=False), "", "Roles with these options (what training and selection will use):",
              roles_text(roles), ""]
    lines.append(skipped_report(source.skipped))
    lines.append(unlike_report(manifest))
    return "\n".join(line for line in lines if line is not None)


def unnamed_report(manifest: pd.DataFrame) -> str | None:
    """How files whose names carry no patient id are grouped (see ``sources._unnamed_patient``)."""
    by_folder = manifest["patient_id"].str.startswith("folder:")
    alone = manifest["patient_id"].str.startswith("image:")
    if not (by_folder.any() or alone.any()):
        return None
    how = []
    if by_folder.any():
        groups = manifest.loc[by_folder, "patient_id"].str.removeprefix("folder:")
        folders = sorted(groups.unique())
        named = ", ".join(map(printable, folders[:3])) + (", ..." if len(folders) > 3 else "")
        how.append(f"{int(by_folder.sum())} in {len(folders)} sub-folder(s) of the class folders ({named}) are {FOLDER_PATIENT}"
                   + _deeper_note(manifest.loc[by_folder, "path"], groups))
    if alone.any():
        how.append(f"{int(alone.sum())} directly in a class folder are {IMAGE_PATIENT}")
    return (f"Patient ids: {int((by_folder | alone).sum())} file name(s) carry no Kermany patient id: {'; '.join(how)}. These patients are "
            f"never matched across class folders or across train/val/test, so there the leakage check sees only identical files.")


def _deeper_note(paths: pd.Series, groups: pd.Series) -> str:
    """What :func:`unnamed_report` adds when grouped files lie deeper than the first sub-folder (``NORMAL/site_b/2026-12-04/``):
    the first level alone names the patient, so a site or a date folder above the patients' becomes one patient ("" when none does)."""
    deeper: list[tuple[str, str]] = []  # (the folder a file is in, below its patient's; the patient's)
    for path, group in zip(paths, groups, strict=True):
        below = str(path).replace(os.sep, "/").rpartition(f"/{group}/")[2]  # the path under the first-level folder
        if "/" in below:
            deeper.append((f"{group}/{below.rpartition('/')[0]}/", group))
    if not deeper:
        return ""
    folder, group = min(deeper)
    return (f"; only that first level names a patient, so {len(deeper)} file(s) in folders below it are each their first-level folder's "
            f"patient (first: {printable(folder)}, patient {printable(group)})")


def numbering_report(manifest: pd.DataFrame) -> str | None:
    """Kermany person numbers shared across infection types: a warning, not a leak (see sources.py)."""
    parts = manifest["patient_id"].str.extract(r"^person(\d+)_(bacteria|virus)$").dropna()
    if parts.empty:
        return None
    frame = parts.set_axis(["number", "type"], axis=1).assign(split=manifest.loc[parts.index, "split"])
    per_folder = ", ".join(f"{split}/ {_both_types(frame[frame['split'] == split])}" for split in SPLITS if (frame["split"] == split).any())
    spans = frame.groupby("number")["split"].nunique()
    same_type_across = frame.groupby(["number", "type"])["split"].nunique()
    crossing = spans[spans > 1].index
    crossing_other_type = [n for n in crossing if not (same_type_across.loc[n] > 1).any()]
    return (
        f"Patient numbers: Kermany numbers pneumonia patients per infection type, so personN_bacteria and personN_virus are "
        f"two children and the patient key keeps the type. Across all folders {_both_types(frame)} person numbers carry both types "
        f"({per_folder}); "
        + (f"{len(crossing_other_type)} number(s) appear in more than one folder with a different type only "
           f"(WARNING, not a leak: treated as different patients, nothing excluded)." if crossing_other_type
           else "no number appears in more than one folder with a different type.")
    )


def _both_types(frame: pd.DataFrame) -> str:
    """``K of N``: of the N person numbers in ``frame``, K name both a bacteria and a virus patient. Given per folder
    too, since the count across folders adds the numbers that recur between them (the README quotes train/'s 808 of 1,635)."""
    types = frame.groupby("number")["type"].nunique()
    return f"{int((types > 1).sum())} of {len(types)}"


def leakage_report(roles: pd.DataFrame) -> str:
    """Patients or identical files that cross the folders, and what is done about each."""
    crossing = leakage(roles, "split")
    if crossing.empty:
        head = "Leakage check: no patient or identical image crosses the folders."
    else:
        shown = crossing.head(MAX_LISTED).assign(split=lambda f: f["split"].map(" and ".join)).rename(columns={"group_id": "group", "split": "folders"})
        listed = shown.to_markdown(index=False) + (f"\n  ... and {len(crossing) - MAX_LISTED} more" if len(crossing) > MAX_LISTED else "")
        head = (f"Leakage check: WARNING {len(crossing)} group(s) (patients or identical files) cross the folders "
                f"({int(crossing['images'].sum())} images):\n{listed}")
    excluded = roles[roles["role"] == "excluded"]
    if excluded.empty:
        return head + "\nNothing is excluded: no training or validation image shares a patient or a file with test or the external set."
    done = [f"  {len(part)} image(s) of {part['group_id'].nunique()} group(s) left out of {_left_out_of(part)} "
            f"({', '.join(f'{n} from {folder}/' for folder, n in part['split'].value_counts().items())}): {note}"
            for note, part in excluded.groupby("role_note")]
    return head + "\nWhat is done about it:\n" + "\n".join(done)


def _left_out_of(part: pd.DataFrame) -> str:
    """What excluded images were left out of: a test/ copy (an identical file filed under both classes) leaves test too."""
    return "training, validation, the external set and test" if (part["split"] == "test").any() else "training, validation and the external set"


def skipped_report(skipped: pd.DataFrame, title: str = "Skipped files and folders") -> str:
    """The files not used and why, with the folders not read (a link loop, COVID/, __MACOSX/)."""
    if skipped.empty:
        return f"{title}: none."
    return _listed(f"{title} ({len(skipped)}):", skipped, "reason")


def unlike_report(manifest: pd.DataFrame) -> str:
    """The readable images that may not be chest X-rays like Kermany's (:mod:`cxr_tune.data.input_checks`):
    they stay in the data (the folder is the user's to change), and ``predict`` would flag them too."""
    flagged = manifest[manifest["check"] != ""]
    title = "Images unlike chest X-rays (colour, blank, tiny, very large, a DICOM lateral view or not a radiograph)"
    if flagged.empty:
        return f"{title}: none."
    return _listed(f"{title}: {len(flagged)}, used as they are; remove any that does not belong:", flagged, "check")


def _listed(header: str, frame: pd.DataFrame, why: str) -> str:
    """``header``, then ``path: why`` for the first :data:`MAX_LISTED` rows and how many more there are."""
    lines = [header] + [f"  {printable(path)}: {reason}" for path, reason in frame[["path", why]].head(MAX_LISTED).itertuples(index=False)]
    if len(frame) > MAX_LISTED:
        lines.append(f"  ... and {len(frame) - MAX_LISTED} more")
    return "\n".join(lines)


def roles_table(roles_frame: pd.DataFrame) -> pd.DataFrame:
    """Images per role and class, with the share of PNEUMONIA."""
    table = pd.crosstab(roles_frame["role"], roles_frame["label"].map(dict(enumerate(CLASSES))))
    table = table.reindex(columns=list(CLASSES), fill_value=0)
    table["total"] = table.sum(axis=1)
    table["% pneumonia"] = (100 * table["PNEUMONIA"] / table["total"]).round(1)
    table["groups"] = roles_frame.groupby("role")["group_id"].nunique()
    return table


def _duplicates_line(manifest: pd.DataFrame) -> str:
    copies = manifest[manifest.duplicated("content_hash", keep=False)]
    if copies.empty:
        return "Duplicates: no byte-identical files."
    sets = copies.groupby("content_hash")["patient_id"].nunique()
    return (
        f"Duplicates: {len(sets)} set(s) of byte-identical files ({len(copies)} files); "
        f"{int((sets > 1).sum())} of them join different patient ids and are merged into one group."
    )


def _spread(values: pd.Series) -> str:
    return f"{values.min()}/{int(values.median())}/{values.max()}"


def roles_text(roles: pd.DataFrame) -> str:
    """:func:`roles_table` as an aligned table for the console."""
    return roles_table(roles).rename_axis(index="role", columns=None).reset_index().to_markdown(index=False)
