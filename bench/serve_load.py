"""Load test of ``tfdeploy.serve`` on loopback: throughput and p50/p99 with batching on and
off, per runtime, and the server's overhead over the artifact run in-process.

Real SST-2 dev sentences (``$TFDEPLOY_DATA_DIR/sst2/dev.tsv``) go to the ``serving_text``
signature over REST from ``--clients`` concurrent clients (aiohttp, in this process: on a
small machine they share its cores with the server, as any loopback test does). Bounded:
``--requests`` per configuration, loopback only. Prints one line per configuration and
the ratios; exit 1 if any request failed. The overhead at concurrency 1 (no batching) is
measured in rounds that alternate with the artifact run in this process, twice: with the
same token ids the in-process run takes (``serving_default``: what the server adds to the
artifact) and with sentences (``serving_text``, against tokenizing and running here).

    python -m tfdeploy.publish RUN_DIR /tmp/bert_serve     # a finished bert.yaml run
    python bench/serve_load.py --model_base_path=/tmp/bert_serve/bert \\
        --artifacts=tflite_int8,onnx_int8 --requests=10000 --clients=32
"""
import argparse
import asyncio
import csv
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sentences():
    data = os.environ.get("TFDEPLOY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
    with open(os.path.join(data, "sst2", "dev.tsv"), encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]


def start(base, artifact, batching, params, threads, replicas=1):
    flags = [f"--model_base_path={base}", "--model_name=m", f"--artifact={artifact}",
             "--port=0", "--rest_api_port=0", f"--threads={threads}",
             f"--replicas={replicas}"]
    if batching:
        flags += ["--enable_batching", f"--batching_parameters_file={params}"]
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy.serve", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"HTTP/REST API at:[\d.]+:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    raise SystemExit(f"server did not start ({artifact})")


async def load(port, texts, requests, clients):
    """``clients`` kept-alive HTTP/1.1 connections sending ``requests`` in all. The client
    is lean on purpose (pre-encoded requests, minimal response parsing): on a small machine
    it shares the cores with the server, and what is measured should be the server."""
    import json

    bodies = [json.dumps({"signature_name": "serving_text", "instances": [t]}).encode()
              for t in texts]
    head = "POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Type: " \
           "application/json\r\nContent-Length: {}\r\n\r\n"
    payloads = [head.format(len(b)).encode() + b for b in bodies]
    latencies, errors, counter = [], [], iter(range(requests))

    async def exchange(reader, writer, payload):
        writer.write(payload)
        status = int((await reader.readline()).split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        return status

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(5):
            await exchange(reader, writer, payloads[0])
        await ready.wait()
        for i in counter:
            started = time.perf_counter()
            status = await exchange(reader, writer, payloads[i % len(payloads)])
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
        writer.close()

    ready = asyncio.Event()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(1.0)  # connected and warmed up
    started = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {"rps": len(latencies) / seconds, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": len(errors), "n": len(latencies)}


def one_client(port, instances, requests, signature="serving_text"):
    """Concurrency 1 with a lean client: one kept-alive socket, the request bytes built
    before the clock starts and only the status line and Content-Length read back, so
    the latency is the server's, not a client library's (http.client's header parsing
    alone took about 0.1 ms a request here). ``instances``: sentences for
    ``serving_text``, or dicts of token-id lists for ``serving_default``."""
    conn = connect(port)
    try:
        exchange(conn, instances[:20], signature)
        latencies = exchange(conn, [instances[i % len(instances)] for i in range(requests)],
                             signature)
    finally:
        conn.close()
    return {"p50": float(np.percentile(latencies, 50)), "errors": 0}


def connect(port):
    import socket

    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def exchange(conn, instances, signature):
    """ms per request, one instance a request, one after another."""
    import json

    latencies = []
    for instance in instances:
        body = json.dumps({"signature_name": signature, "instances": [instance]}).encode()
        request = (f"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                   f"\r\n\r\n").encode() + body
        started = time.perf_counter()
        conn.sendall(request)
        status = read_response(conn)
        latencies.append((time.perf_counter() - started) * 1e3)
        if status != 200:
            raise SystemExit(f"request failed: {status}")
    return latencies


def overhead(port, base, artifact, texts, ids, threads, rounds=5, per_round=100):
    """Concurrency 1, the server and the artifact in this process side by side: rounds
    alternate between the server (token ids, then sentences) and the artifact here (its
    run on the same token ids, then tokenizing and running), on the same sentences in the
    same order, so both see the same machine and the same input shapes one after another.
    Medians in ms: ids, text (server); local, local_text (in-process)."""
    import tfdeploy  # noqa: F401
    from tfdeploy.serve.servable import Servable

    servable = Servable(latest(base), artifact, threads=threads)
    rows = [servable.tokenize([t])[0] for t in texts]
    times = {"ids": [], "text": [], "local": [], "local_text": []}
    conn = connect(port)
    try:
        exchange(conn, ids[:20], "serving_default")
        for row in rows[:20]:
            servable.run(row)
        for r in range(rounds):
            part = slice(r * per_round % len(texts), r * per_round % len(texts) + per_round)
            times["ids"] += exchange(conn, ids[part], "serving_default")
            times["text"] += exchange(conn, texts[part], "serving_text")
            for row in rows[part]:
                started = time.perf_counter()
                servable.run(row)
                times["local"].append((time.perf_counter() - started) * 1e3)
            for sentence in texts[part]:
                started = time.perf_counter()
                servable.run(servable.tokenize([sentence])[0])
                times["local_text"].append((time.perf_counter() - started) * 1e3)
    finally:
        conn.close()
    return {k: statistics.median(v) for k, v in times.items()}


def read_response(conn):
    """The status of one HTTP/1.1 response with a Content-Length; its body is read."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    return int(head.split(b" ", 2)[1])


def token_rows(base, artifact, texts):
    """Each sentence as the id tensors of ``serving_default`` (the server's tokenizer)."""
    import tfdeploy  # noqa: F401
    from tfdeploy.serve.servable import Servable

    servable = Servable(latest(base), artifact, threads=1)
    return [{k: v[0].tolist() for k, v in servable.tokenize([t])[0].items()} for t in texts]


def latest(base):
    return os.path.join(base, str(max(int(d) for d in os.listdir(base) if d.isdigit())))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--artifacts", default="tflite_int8")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="per replica")
    parser.add_argument("--replicas", type=int, default=1,
                        help="interpreters answering at once (batching: one batch thread "
                             "each)")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout_micros", type=int, default=3000)
    args = parser.parse_args()
    texts = sentences()
    ids = token_rows(args.model_base_path, args.artifacts.split(",")[0], texts)
    params = os.path.join("/tmp", f"serve_load_batching_{os.getpid()}.txt")
    with open(params, "w") as f:
        f.write(f"max_batch_size {{ value: {args.max_batch_size} }}\n"
                f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
                f"max_enqueued_batches {{ value: 1000 }}\n"
                f"num_batch_threads {{ value: {args.replicas} }}\n")
    print(f"server: {args.replicas} replica(s) x {args.threads} thread(s); batching: "
          f"max_batch_size {args.max_batch_size}, batch_timeout_micros "
          f"{args.batch_timeout_micros}, {args.replicas} batch thread(s)", flush=True)
    failed, results = 0, {}
    for artifact in args.artifacts.split(","):
        for batching in (False, True):
            proc, port = start(args.model_base_path, artifact, batching, params,
                               args.threads, args.replicas)
            try:
                r = asyncio.run(load(port, texts, args.requests, args.clients))
                if batching:  # a lone request waits for its batch's timeout
                    one = {"text": one_client(port, texts, 300)["p50"],
                           "ids": one_client(port, ids, 300, "serving_default")["p50"]}
                else:
                    one = overhead(port, args.model_base_path, artifact, texts, ids,
                                   args.threads)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            results[(artifact, batching)] = (r, one)
            failed += r["errors"]
            print(f"{artifact:20s} batching={'on ' if batching else 'off'} "
                  f"{r['n']} requests, {args.clients} clients: {r['rps']:7.1f} req/s, "
                  f"p50 {r['p50']:6.2f} ms, p99 {r['p99']:7.2f} ms, errors {r['errors']} | "
                  f"1 client: p50 {one['text']:.2f} ms (token ids: {one['ids']:.2f})",
                  flush=True)
        on, off = results[(artifact, True)][0], results[(artifact, False)]
        one = off[1]
        print(f"{artifact}: batching throughput ratio {on['rps'] / off[0]['rps']:.2f}x "
              f"(goal >= 2); server overhead at concurrency 1 (interleaved with the "
              f"artifact in-process): token ids {one['ids']:.2f} ms over the in-process "
              f"run's {one['local']:.2f} ms = {one['ids'] / one['local']:.2f}x "
              f"(goal <= 1.3); "
              f"sentences {one['text']:.2f} ms over in-process tokenizing and running "
              f"{one['local_text']:.2f} ms = {one['text'] / one['local_text']:.2f}x",
              flush=True)
    os.unlink(params)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
