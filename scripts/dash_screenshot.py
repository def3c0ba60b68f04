"""Write docs/dash-plan.svg, the README's screenshot of `swiftplan dash`'s plan view.

Runs the dashboard headless on a catalog cluster (no probe), searches Qwen2.5-7B on 2 × RTX 4090 with
the default seed, opens the plan tab and saves Textual's SVG screenshot. Usage:

    python scripts/dash_screenshot.py [OUTPUT.svg]
"""

from __future__ import annotations

import sys
from pathlib import Path

from swiftplan.tui.app import make_app

ROOT = Path(__file__).resolve().parent.parent
SIZE = (110, 36)


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dash-plan.svg"
    app = make_app(gpus="2xrtx4090", model="Qwen/Qwen2.5-7B", cursor_blink=False)

    async def drive(pilot) -> None:  # type: ignore[no-untyped-def]
        async def settle() -> None:
            for _ in range(3):
                await app.workers.wait_for_complete()
                await pilot.pause()

        await settle()
        app.query_one("#job-dataset_tokens").value = "50M"  # type: ignore[attr-defined]
        await pilot.press("ctrl+r")
        await settle()
        await pilot.press("4")
        app.clear_notifications()
        await pilot.pause()
        output.parent.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(output.name, path=str(output.parent))
        app.exit()

    app.run(headless=True, size=SIZE, auto_pilot=drive)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
