"""Many stores: ``siloguard train`` with the UK split into --stores stores, wall time and the peak
memory of the whole process tree.

    .venv/bin/python bench/stores.py --data ../shared/data/online_retail/online_retail_2010-12_2011-10.csv.gz --stores 150 --rounds 10 --no-dp
    .venv/bin/python bench/stores.py --data ... --stores 150 --rounds 10            # with DP

Runs the CLI as users do (``siloguard train --data FILE --consent FILE --stores N --rounds R
[--no-dp] --out DIR``; every customer given a simulated profiling consent, bench/_consent.py)
in its own process and, every --every seconds, sums the memory of that process and all its
descendants (the Flower simulation engine's Ray processes and their workers included): RSS
(counts shared pages once per process, so an upper bound) and PSS (shared pages divided among
the processes that share them, from /proc/PID/smaps_rollup). Peak and per-store figures, the
round lines the CLI printed, wall time and the load average before and after go to
bench/results/stores-<dp|nodp>.json. Goals (issue 17): 150 stores x 10 rounds without DP in
< 10 minutes on 2 cores, with DP < 2x that; memory flat per store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _consent import everyone_consents  # noqa: E402


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc's parent ids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return values.get("Rss", 0), values.get("Pss", 0)


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_pss = self.peak_processes = self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            rss = pss = 0
            for pid in pids:
                r, p = _memory(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self.stop.wait(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--stores", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop the run after this many seconds (the rounds done so far are still recorded)")
    args = parser.parse_args()
    label = "nodp" if args.no_dp else "dp"
    out = args.out or ROOT / "bench" / "results" / f"stores-{label}.json"
    siloguard = str(Path(sys.executable).with_name("siloguard"))
    with tempfile.TemporaryDirectory() as tmp:
        consent = everyone_consents(args.data, Path(tmp))
        run = Path(tmp) / "run"
        cmd = [siloguard, "train", "--data", str(args.data), "--consent", str(consent), "--stores", str(args.stores),
               "--rounds", str(args.rounds), "--out", str(run), *(["--no-dp"] if args.no_dp else [])]
        load_before = os.getloadavg()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=os.environ | {"COLUMNS": "200", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        sampler = Sampler(proc.pid, args.every)
        sampler.start()
        lines: list[str] = []
        timed_out = threading.Event()
        if args.timeout:
            def stop() -> None:
                timed_out.set()
                for pid in reversed(_tree(proc.pid)):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
            timer = threading.Timer(args.timeout, stop)
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        arrived: list[float] = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("round "):
                arrived.append(round(time.perf_counter() - started, 1))
            print(line, end="", flush=True)
        rc = proc.wait()
        wall = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        load_after = os.getloadavg()
        rounds_file = run / "coordinator" / "rounds.json"
        rounds = json.loads(rounds_file.read_text())["rounds"] if rounds_file.is_file() else []
    stores = len(rounds[-1]["per_store"]) if rounds else args.stores
    done = [line for line in lines if line.startswith("round ")]
    result = {
        "command": " ".join(cmd[1:]).replace(tmp, "$TMP"),
        "exit_code": rc, "timed_out": timed_out.is_set(), "wall_s": round(wall, 1), "stores": stores, "rounds": len(rounds) or len(done),
        "peak_rss_mib": round(sampler.peak_rss / 1024, 1), "peak_pss_mib": round(sampler.peak_pss / 1024, 1),
        "peak_processes": sampler.peak_processes, "samples": sampler.samples,
        "pss_mib_per_store": round(sampler.peak_pss / 1024 / max(stores, 1), 2),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "round_lines": done,
        "round_done_at_s": arrived,  # seconds from the start of the command to each round line
        "rounds_detail": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print(f"\n| stores | rounds | DP | wall | peak RSS (tree) | peak PSS (tree) | processes | load before / after | exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {stores} | {result['rounds']}{' (stopped)' if timed_out.is_set() else ''} | {'no' if args.no_dp else 'yes'} | {wall:.0f} s | {result['peak_rss_mib']:,} MiB | "
          f"{result['peak_pss_mib']:,} MiB | {sampler.peak_processes} | {load_before[0]:.2f} / {load_after[0]:.2f} | {rc} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
