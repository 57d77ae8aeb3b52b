import json
import subprocess
import sys

from .conftest import ROOT


def test_bench_prints_ratios_against_the_plain_loop():
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--models", "resnet8", "--warmup", "1", "--steps", "2",
                           "--repeats", "2", "--batch", "32", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    entry = report["models"]["resnet8"]
    assert entry["plain"]["median"] > 0 and entry["package"]["median"] > 0 and entry["package/plain"] > 0
    assert report["pipeline"]["images_per_s"] > 0
