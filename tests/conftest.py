import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; tiny presets need none
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
