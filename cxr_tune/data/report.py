"""Readable text reports of a data source: what ``inspect`` and ``prepare`` print."""

from __future__ import annotations

import pandas as pd

from cxr_tune.data.sources import CLASSES, Source
from cxr_tune.data.splits import leakage

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


def inspect_report(source: Source) -> str:
    """The full ``inspect`` text: counts, duplicates, leakage, unparsed names, skipped files."""
    manifest = source.manifest
    lines = [f"Data: {source.description}", ""]
    lines += [summary_table(manifest).to_string(index=False), ""]
    lines.append(_duplicates_line(manifest))
    unparsed = int(manifest["patient_id"].str.startswith("image:").sum())
    if unparsed:
        lines.append(f"Patient ids: {unparsed} file name(s) carry no Kermany patient id; each is treated as its own patient.")
    lines.append(leakage_report(manifest))
    lines.append(skipped_report(source.skipped))
    return "\n".join(lines)


def leakage_report(manifest: pd.DataFrame) -> str:
    crossing = leakage(manifest, "split")
    if crossing.empty:
        return "Leakage check: no patient or identical image crosses train/val/test."
    listed = crossing.head(MAX_LISTED).to_string(index=False)
    return (
        f"Leakage check: WARNING {len(crossing)} group(s) cross the train/val/test folders "
        f"({int(crossing['images'].sum())} images). Copies outside test are excluded from training:\n{listed}"
    )


def skipped_report(skipped: pd.DataFrame, title: str = "Skipped files") -> str:
    if skipped.empty:
        return f"{title}: none."
    lines = [f"{title} ({len(skipped)}):"]
    lines += [f"  {row.path}: {row.reason}" for row in skipped.head(MAX_LISTED).itertuples()]
    if len(skipped) > MAX_LISTED:
        lines.append(f"  ... and {len(skipped) - MAX_LISTED} more")
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
