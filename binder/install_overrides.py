"""Install binder/overrides.json (JupyterLab setting defaults) into this Python's JupyterLab settings dir.

Used by `make setup` (the venv) and Binder's postBuild. It ships the widget manager's `saveState`
setting, so a saved notebook keeps its widgets' state and reopens without "Error displaying widget:
model not found". Settings already in an overrides.json there are kept (merged per plugin).
"""
import json
import sys
from pathlib import Path

source = Path(__file__).with_name("overrides.json")
target = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
target.parent.mkdir(parents=True, exist_ok=True)
merged = json.loads(target.read_text()) if target.exists() else {}
for plugin, settings in json.loads(source.read_text()).items():
    merged.setdefault(plugin, {}).update(settings)
text = json.dumps(merged, indent=2) + "\n"
if not target.exists() or target.read_text() != text:
    target.write_text(text)
    print(f"JupyterLab settings overrides -> {target}")
