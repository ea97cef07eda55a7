"""The visual report: a contact sheet per set (``_report/faceset_NNN.jpg``) and a static ``report.html``.

The page opens from disk in any browser: no script, no network, images by relative path. Every string
from the data (paths, names) is HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..artifacts.facesetdir import read_sets
from ..base.fsio import atomic_write_bytes
from ..cluster.calibration import describe

THUMB = 96
COLUMNS = 8
SHEET_FACES = 48
REPORT_DIR = "_report"
REPORT = "report.html"


def write_report(root: Path, plan: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Write the contact sheets and the page for every canonical set; returns the page's path."""
    (root / REPORT_DIR).mkdir(exist_ok=True)
    added = {int(identity["set"]): len(identity["members"]) for identity in plan["identities"]}
    rows = []
    for faceset in read_sets(root):
        files = [faceset.folder / member.file for member in faceset.members] + faceset.hand_files
        sheet = root / REPORT_DIR / f"{faceset.name}.jpg"
        if files:
            atomic_write_bytes(sheet, contact_sheet(files[:SHEET_FACES]))
        distances = [member.distance for member in faceset.members]
        rows.append(
            {
                "name": faceset.name,
                "faces": len(files),
                "added": added.get(faceset.number, 0),
                "new": any(i["new"] and int(i["set"]) == faceset.number for i in plan["identities"]),
                "distance": float(np.mean(distances)) if distances else None,
                "sheet": f"{REPORT_DIR}/{sheet.name}" if files else "",
            }
        )
    page = root / REPORT
    atomic_write_bytes(page, render(plan, summary, rows).encode("utf-8"))
    return page


def contact_sheet(files: list[Path]) -> bytes:
    tiles = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        tiles.append(
            cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
            if image is not None
            else np.zeros((THUMB, THUMB, 3), np.uint8)
        )
    while len(tiles) % COLUMNS and len(tiles) > COLUMNS:
        tiles.append(np.full((THUMB, THUMB, 3), 255, np.uint8))
    rows = [np.hstack(tiles[i : i + COLUMNS]) for i in range(0, len(tiles), COLUMNS)]
    ok, encoded = cv2.imencode(".jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else b""


def render(plan: dict[str, Any], summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    esc = html.escape
    thresholds = ", ".join(
        f"{esc(k)} {'learned from the library' if v is None else format(v, 'g')}" for k, v in plan["thresholds"].items()
    )
    learned = plan.get("estimate") or {}
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>facesets report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{max-width:776px}</style>",
        "</head><body>",
        "<h1>facesets report</h1>",
        f"<p>Plan <code>{esc(plan['id'])}</code>, algorithm <code>{esc(plan['algorithm'])}</code>, "
        f"thresholds (cosine distance): {thresholds}; model {esc(plan['model'].get('name', ''))}.</p>",
        _estimate_line(learned),
        f"<p>New sets: {len(summary['new_sets'])}; sets extended: {len(summary['extended_sets'])}; "
        f"faces written: {summary['faces_written']}; photos skipped: {summary['faces_skipped']}.</p>",
        "<h2>Sets</h2>",
        "<table><tr><th>set</th><th>faces</th><th>added</th><th>mean distance to centre</th><th>sample</th></tr>",
    ]
    for row in rows:
        sheet = f'<img src="{esc(row["sheet"])}" alt="{esc(row["name"])}">' if row["sheet"] else ""
        distance = f"{row['distance']:.3f}" if row["distance"] is not None else "hand-made"
        label = esc(row["name"]) + (" (new)" if row["new"] else "")
        body.append(
            f"<tr><td>{label}</td><td>{row['faces']}</td><td>{row['added']}</td><td>{distance}</td><td>{sheet}</td></tr>"
        )
    body += ["</table>", "<h2>Dropped</h2>", "<table><tr><th>reason</th><th>faces</th><th>example faces</th></tr>"]
    for entry in plan["dropped"]:
        examples = "<br>".join(esc(key) for key in entry["keys"])
        body.append(f"<tr><td>{esc(entry['reason'])}</td><td>{entry['faces']}</td><td>{examples}</td></tr>")
    body += ["</table>", _reasons(), "</body></html>", ""]
    return "\n".join(body)


def _reasons() -> str:
    return (
        "<h2>Reasons</h2><ul>"
        "<li>singleton: a face like no other face</li>"
        "<li>low_quality: a poor face (low recognizer norm) that no single cluster would take</li>"
        "<li>outlier: farther than the export distance from its cluster's centre</li>"
        "<li>too_small: fewer faces than the minimum set size</li>"
        "<li>one_photo: fewer distinct shots than the minimum (copies of one photo)</li>"
        "<li>not_cohesive: average inner similarity below the cluster threshold</li></ul>"
    )


def _estimate_line(learned: dict[str, Any]) -> str:
    """What clustering learned about the library, in words (empty for plans made before it did)."""
    return f"<p>Learned from {learned['faces']} faces: {html.escape(describe(learned))}.</p>" if learned else ""
