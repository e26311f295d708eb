"""Stand-in: collect_results' reader, reduced to what the hook wraps (every run folder's JSON lines)."""

import json
import pathlib


def load_records(path):
    records = []
    for run in sorted(pathlib.Path(path).iterdir()):  # a missing folder raises, as upstream's os.listdir
        if (run / "results.jsonl").is_file():
            records.extend(json.loads(line) for line in (run / "results.jsonl").read_text().splitlines())
    return records
