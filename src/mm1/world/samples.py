"""A contact sheet of the world for people to look at: caption pairs in both styles and one document."""

from __future__ import annotations

import io
import textwrap

from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg only, no pyplot state
from matplotlib.figure import Figure

from mm1.world.render import decode_image
from mm1.world.world import World


def render_samples_png(world: World, n_captions: int = 8) -> bytes:
    """PNG bytes: a row block of caption images (alt-text and synthetic caption under each) and one document."""
    captions = world.captions[:n_captions]
    doc = next((d for d in world.documents if sum(im is not None for im in d.images) >= 2), None)
    doc = doc or (world.documents[0] if world.documents else None)
    cols = 4
    cap_rows = -(-len(captions) // cols)
    fig = Figure(figsize=(cols * 3.2, cap_rows * 4.4 + (4.0 if doc else 0)))
    FigureCanvasAgg(fig)
    rows = cap_rows + (1 if doc else 0)
    grid = fig.add_gridspec(rows, cols, hspace=0.7, wspace=0.15)
    for k, sample in enumerate(captions):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(decode_image(sample.image), interpolation="nearest")
        ax.set_axis_off()
        text = f"ALT: {sample.captions['alt']}\n\nSYN: {sample.captions['synthetic']}"
        wrapped = "\n".join(textwrap.fill(part, 40) if part else "" for part in text.split("\n"))
        ax.text(0.5, -0.04, wrapped, transform=ax.transAxes, ha="center", va="top", fontsize=6.5)
    if doc is not None:
        images = [im for im in doc.images if im is not None][: cols - 1]
        for k, png in enumerate(images):
            ax = fig.add_subplot(grid[cap_rows, k])
            ax.imshow(decode_image(png), interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"image {k + 1}", fontsize=8)
        ax = fig.add_subplot(grid[cap_rows, cols - 1])
        ax.set_axis_off()
        parts = [t if t is not None else "<image>" for t in doc.texts]
        body = textwrap.fill(" ".join(parts), 45)
        ax.text(0, 1, f"{doc.id} ({doc.meta['format']})\n{body}", transform=ax.transAxes, va="top", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    return buffer.getvalue()
