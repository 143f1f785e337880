"""Load and latency of catdog-serve on loopback, beside offline prediction of the same images on the same machine.

Starts ``python -m catdog.serve`` on 127.0.0.1 (a free port) for each --batch-sizes value (serve.max_batch_size: 1 =
no dynamic batching), and for each --clients level sends a fixed number of requests (--requests, cycled over the
images held in memory, multipart uploads or, with --raw, raw bodies) from that many client threads, each with its
own kept-alive connection. A level stops by itself after its requests or --time-limit seconds, whichever comes
first. Reported per level: requests/s, latency p50 / p95 / p99 (ms), errors (any answer but 200 with the probability
the image gets alone, within 1e-4: other batches run other float32 kernels), and the server's peak memory: PSS summed
over its processes (the main process, its HTTP processes and its inference workers; PSS shares each shared page among
the processes that map it, so the sum is what the server costs the machine), sampled every 0.2 s.

Then, on the batching server:
- --soak requests at the largest client level, PSS sampled every second: the memory after each tenth of them.
- --mixed requests at the largest level with one bad input in --bad-every (empty body, text, HTML, truncated and
  corrupt JPEGs, a decompression bomb, a 100-megapixel JPEG, a body over serve.max_bytes), cycled: every bad one must
  get its 4xx, every good one its right answer, and the server must still answer /health afterwards.

Offline: the images through catdog.prediction.predict_member, the function predict.py runs for each model (its
decoder, batch size and DataLoader workers), timed from the call to the last probability (the workers' start-up
included), the model loaded beforehand.

Example (the figures in docs/benchmarks.md):
    python bench/serve_load.py --ckpt RUN --data ../shared/data/dogs-vs-cats/test --images 2000
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import image_list, machine_line, markdown_table  # noqa: E402

from catdog.data.datamodule import default_num_workers  # noqa: E402
from catdog.data.decode import resolve_decoder  # noqa: E402
from catdog.inference import load_classifier  # noqa: E402
from catdog.prediction import predict_member  # noqa: E402
from catdog.runs.selection import resolve_members  # noqa: E402
from catdog.serving.client import Client, ServerProcess  # noqa: E402

#: Another batch runs other float32 kernels: a good answer may differ from the image's answer alone by this much.
SAME_ANSWER = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="what catdog-serve's ckpt= takes (a run folder, a .ckpt, ...)")
    p.add_argument("--data", required=True, help="folder of images to send")
    p.add_argument("--images", type=int, default=500, help="images read into memory (and predicted offline)")
    p.add_argument("--tta", type=int, default=0)
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per level")
    p.add_argument("--requests", default="300,2000,6000", help="requests per level (one per --clients value)")
    p.add_argument("--batch-sizes", default="1,16", help="serve.max_batch_size per server (1 = no batching)")
    p.add_argument("--batch-timeout", type=float, default=0.005, help="serve.batch_timeout (s)")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds a level may run at most")
    p.add_argument("--soak", type=int, default=30_000, help="requests of the memory soak (0: skip)")
    p.add_argument("--mixed", type=int, default=2_000, help="requests of the bad-input mix (0: skip)")
    p.add_argument("--bad-every", type=int, default=10)
    p.add_argument("--raw", action="store_true", help="send the images as raw bodies, not multipart forms")
    p.add_argument("--server-args", nargs="*", default=[], help="more catdog-serve overrides, e.g. serve.threads=1")
    p.add_argument("--batch-size", type=int, default=64, help="offline predict batch size (predict.py's default)")
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    return p.parse_args(argv)


# ----- memory ------------------------------------------------------------------------------------------------------
def pss_mib(pids) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


class MemorySampler:
    """PSS of the server's processes every ``every`` seconds while in ``with``: ``peak`` and the ``samples``."""

    def __init__(self, server: ServerProcess, every: float = 0.2):
        self.server, self.every, self.samples = server, every, []
        self.stop = threading.Event()

    def _run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), pss_mib(self.server.pids())))
            self.stop.wait(self.every)

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def peak(self) -> float:
        return max((m for _, m in self.samples), default=float("nan"))


# ----- load --------------------------------------------------------------------------------------------------------
def run_level(url: str, jobs: list, clients: int, time_limit: float, check, raw: bool = False) -> dict:
    """Send ``jobs`` (bytes to upload) from ``clients`` threads; ``check(i, status, answer)`` says whether job i's
    answer is right. Stops after every job or ``time_limit`` s."""
    counter = itertools.count()
    deadline = time.monotonic() + time_limit
    latencies, wrong, lock = [], [], threading.Lock()

    def worker():
        client = Client(url, timeout=120)
        try:
            while time.monotonic() < deadline:
                i = next(counter)
                if i >= len(jobs):
                    return
                start = time.perf_counter()
                try:
                    status, answer = client.predict(jobs[i], raw=raw)
                except OSError as exc:
                    status, answer = -1, str(exc)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if not check(i, status, answer):
                        wrong.append((i, status, str(answer)[:200]))
        finally:
            client.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies), "wall_s": wall, "rps": len(latencies) / wall,
        "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
        "errors": len(wrong), "examples": wrong[:3],
    }  # fmt: skip


def bad_inputs() -> list[tuple[str, bytes, int]]:
    """(what, body, the status it must get): the bad inputs of the mix."""
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(good, format="JPEG")
    jpeg = good.getvalue()
    bomb = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(bomb, format="PNG")
    big = io.BytesIO()
    Image.new("RGB", (10_000, 10_000), (90, 90, 90)).save(big, format="JPEG", quality=20)
    return [
        ("empty body", b"", 400), ("text file", b"not a picture\n" * 20, 415),
        ("HTML page", b"<!doctype html><html><body>404</body></html>", 415),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], 422), ("corrupt JPEG", jpeg[:200] + bytes(range(256)) * 4, 422),
        ("decompression bomb (PNG, 20000x20000)", bomb.getvalue(), 413), ("100-megapixel JPEG", big.getvalue(), 413),
        ("body over serve.max_bytes (21 MB)", b"\xff\xd8" + os.urandom(21_000_000), 413),
    ]  # fmt: skip


class Answers:
    """Each image's answer alone: the reference a loaded server's answers are checked against."""

    def __init__(self, url: str, datas: list[bytes]):
        client = Client(url)
        self.probs = [client.predict(d)[1]["probabilities"] for d in datas]
        client.close()

    def right(self, image: int, status: int, answer) -> bool:
        expected = self.probs[image % len(self.probs)]
        return status == 200 and all(abs(answer["probabilities"][c] - p) <= SAME_ANSWER for c, p in expected.items())


def soak(server: ServerProcess, datas, answers: Answers, clients: int, count: int, time_limit: float) -> str:
    """``count`` requests, memory sampled each second: PSS at each tenth of the requests, and the peak."""
    jobs = [datas[i % len(datas)] for i in range(count)]
    with MemorySampler(server, every=1.0) as memory:
        result = run_level(server.url, jobs, clients, time_limit, answers.right)
    first = memory.samples[0][0]
    marks = []
    for tenth in range(1, 11):
        at = first + result["wall_s"] * tenth / 10
        marks.append(next((m for t, m in memory.samples if t >= at), memory.samples[-1][1]))
    return (
        f"soak: {result['requests']:,} requests at {clients} clients, {result['rps']:.1f} req/s, errors "
        f"{result['errors']}; PSS (MiB) after each tenth of the requests: {', '.join(f'{m:.0f}' for m in marks)}; "
        f"peak {memory.peak:.0f}"
    )


def mixed(server: ServerProcess, datas, answers: Answers, clients: int, count: int, every: int, limit: float) -> str:
    """``count`` requests, one in ``every`` a bad input: the wrong answers, the statuses seen, the server's health."""
    bad = bad_inputs()
    kinds, jobs = [], []
    for i in range(count):
        if i % every == every - 1:
            name, body, status = bad[(i // every) % len(bad)]
            kinds.append((name, status))
            jobs.append(body)
        else:
            kinds.append((None, i % len(datas)))
            jobs.append(datas[i % len(datas)])
    seen: dict[str, list] = {}

    def right(i, status, answer):
        name, what = kinds[i]
        if name is None:
            return answers.right(what, status, answer)
        seen.setdefault(name, []).append((status, answer.get("detail") if isinstance(answer, dict) else answer))
        return status == what

    result = run_level(server.url, jobs, clients, limit, right)
    alive = server.process.poll() is None and Client(server.url).get("/health") == (200, b"ok")
    rows = [(name, seen[name][0][0], len(seen[name]), seen[name][0][1]) for name, _, _ in bad if name in seen]
    return "\n".join([
        f"bad-input mix: {result['requests']:,} requests at {clients} clients, 1 in {every} bad: {result['errors']} "
        f"wrong answers (good or bad), server alive and healthy afterwards: {alive}", "",
        markdown_table(("input", "status", "count", "message"), rows),
    ])  # fmt: skip


def offline(members, paths: list[str], tta: int, batch_size: int) -> dict:
    """predict.py's per-model loop over ``paths`` (models loaded beforehand): images/s, the better of two passes (the
    first also warms the caches)."""
    decoder, workers = resolve_decoder("auto"), default_num_workers()
    models = [load_classifier(m) for m in members]
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        for model in models:
            predict_member(
                model, paths=paths, tta=tta, device=torch.device("cpu"), batch_size=batch_size, workers=workers,
                precision="auto", compile=False, temperature=model.temperature, views="zoom", decoder=decoder,
            )  # fmt: skip
        rates.append(len(paths) / (time.perf_counter() - start))
    return {"images_s": max(rates), "decoder": decoder, "workers": workers, "batch_size": batch_size}


def main(argv=None):
    args = parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    requests = [int(r) for r in args.requests.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if len(requests) != len(clients):
        raise SystemExit("--requests needs one value per --clients value")
    with image_list(args.data, args.images) as (paths, _, description):
        run(args, clients, requests, batches, paths, description)


def run(args, clients, requests, batches, paths, description) -> None:
    datas = [Path(p).read_bytes() for p in paths]
    lines = [f"# catdog-serve load, {time.strftime('%Y-%m-%d %H:%M')}", "", machine_line(torch.device("cpu")), ""]
    sent = "raw bodies" if args.raw else "multipart uploads (field file)"
    lines += [f"images: {description}, {len(paths)} in memory, sent as {sent}; ckpt {args.ckpt}; tta={args.tta}", ""]
    if args.server_args:
        lines += [f"catdog-serve overrides: {' '.join(args.server_args)}", ""]
    print("\n".join(lines), flush=True)
    base = offline(resolve_members(args.ckpt), paths, args.tta, args.batch_size)
    lines += [
        f"offline predict (catdog.prediction.predict_member, decoder {base['decoder']}, batch {base['batch_size']}, "
        f"{base['workers']} DataLoader worker(s)): {base['images_s']:.1f} images/s", "",
    ]  # fmt: skip
    print(lines[-2], flush=True)
    rows, extra, answers = [], [], None
    log_dir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    for batch in batches:
        server_args = [
            f"ckpt={args.ckpt}", f"tta={args.tta}", f"serve.max_batch_size={batch}",
            f"serve.batch_timeout={args.batch_timeout}", f"hydra.run.dir={log_dir / f'batch{batch}'}",
            *args.server_args,
        ]  # fmt: skip
        with ServerProcess(server_args, cwd=log_dir, log=str(log_dir / f"batch{batch}.log")) as server:
            answers = answers or Answers(server.url, datas)
            for level, count in zip(clients, requests):
                jobs = [datas[i % len(datas)] for i in range(count)]
                warm_up = jobs[: min(500, count)]  # every batch size met once (oneDNN builds its kernels)
                run_level(server.url, warm_up, level, args.time_limit, answers.right, args.raw)
                with MemorySampler(server) as memory:
                    result = run_level(server.url, jobs, level, args.time_limit, answers.right, args.raw)
                rows.append({**result, "batch": batch, "pss": memory.peak})
                print(f"max_batch_size {batch}: {rows[-1]}", flush=True)
            if batch == batches[-1] and args.soak:
                extra.append(soak(server, datas, answers, max(clients), args.soak, args.time_limit * 10))
                print(extra[-1], flush=True)
            if batch == batches[-1] and args.mixed:
                extra.append(mixed(server, datas, answers, max(clients), args.mixed, args.bad_every, args.time_limit))
                print(extra[-1], flush=True)
    headers = ("max_batch_size", "clients", "requests", "req/s", "x offline", "p50 ms", "p95 ms", "p99 ms", "errors")
    table = markdown_table(
        (*headers, "peak PSS MiB"),
        [
            (r["batch"], r["clients"], r["requests"], f"{r['rps']:.1f}", f"{r['rps'] / base['images_s']:.2f}",
             f"{r['p50']:.1f}", f"{r['p95']:.1f}", f"{r['p99']:.1f}", r["errors"], f"{r['pss']:.0f}")
            for r in rows
        ],
    )  # fmt: skip
    report = "\n".join([*lines, table, "", *(f"{e}\n" for e in extra)])
    print("\n" + report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
