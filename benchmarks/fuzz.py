#!/usr/bin/env python
"""Long fuzz run of the ``.bmz`` parser and decoder (the short one is part of the tests).

    python benchmarks/fuzz.py [--minutes 10] [--out DIR]

Cases are generated from a seed each, so any failure is reproducible (``--replay SEED``). Each
case mutates a valid file — encoded from real MRI (the README sample, MIT) with the flagship and
with a factorized-prior model — in one of these ways: random bytes; 1–16 bit flips anywhere;
truncation at a random offset; absurd slice counts, lengths, offsets and versions written into the
header / index *with their CRCs recomputed*; forged chunk payloads with valid CRCs (random bytes,
another slice's chunk, spliced or truncated payloads, constant chunks with absurd values) — for
learned and for bounded-error (``--lossless`` / ``--max-error``) files; forged
metadata (valid CRC, wrong shapes, dtypes, intensity ranges, qualities). Allowed outcomes: the
original array (undamaged input), an array of the right shape and dtype within the stored range
(a forged but decodable chunk), or a :class:`bmz.errors.BmzError`. Anything else — another
exception, a crash of the process (the child is restarted and the case recorded), more than 10 s
of CPU on a case, or resident memory above 4 GB — is a failure. Writes ``fuzz.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KINDS = ["random", "bitflip", "truncate", "header", "index", "chunk", "metadata"]


def _crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def make_case(seed: int, files: list[bytes]):
    """→ (kind, mutated bytes)."""
    import numpy as np

    from bmz.bitstream import BmzReader, pack

    rng = np.random.default_rng(seed)
    good = files[seed % len(files)]
    kind = KINDS[int(rng.integers(len(KINDS)))]
    b = bytearray(good)
    if kind == "random":
        return kind, rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes()
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 17))):
            p = int(rng.integers(len(b)))
            b[p] ^= 1 << int(rng.integers(8))
        return kind, bytes(b)
    if kind == "truncate":
        return kind, bytes(b[: int(rng.integers(len(b)))])
    with BmzReader(good) as r:
        meta, chunks = r.meta, [r.chunk(k) for k in range(r.n_slices)]
    if kind == "chunk":
        k = int(rng.integers(len(chunks)))
        c = chunks[k]
        how = int(rng.integers(5))
        if how == 0:
            # the chunk's own kind (learned, or bounded-error) + random payload
            chunks[k] = c[:1] + rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes()
        elif how == 1:
            chunks[k] = chunks[int(rng.integers(len(chunks)))]
        elif how == 2:
            chunks[k] = c[: int(rng.integers(len(c) + 1))]
        elif how == 3:
            cut = int(rng.integers(1, len(c)))
            chunks[k] = c[:cut] + rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes() + c[cut:]
        else:
            v = int(rng.integers(-2**62, 2**62))
            chunks[k] = bytes([int(rng.integers(0, 4))]) + v.to_bytes(8, "little", signed=True)
        return kind, pack(meta, chunks)
    if kind == "metadata":
        m = json.loads(json.dumps(meta))
        field = ["shape", "dtype", "intensity", "codec.quality", "codec.model", "codec.chunk_format"][int(rng.integers(6))]
        val = [[-1], [2**40, 2, 2], [0], "u9", "|O", {"min": 5, "max": 1}, 0, 10**9, "../../etc", None, 2][int(rng.integers(11))]
        if "." in field:
            a, c = field.split(".")
            m.setdefault(a, {})[c] = val
        else:
            m[field] = val
        try:
            return kind, pack(m, chunks)
        except Exception:  # the writer itself refused (that is fine): fuzz the bytes instead
            return kind, bytes(b)
    # header / index: overwrite integers with absurd values, then fix the CRC of that block
    if kind == "header":  # major/minor/flags/M/N (docs/FORMAT.md §5.2), CRC recomputed
        pos, width = [(8, 2), (10, 2), (12, 4), (16, 8), (24, 4)][int(rng.integers(5))]
        vals = [0, 1, 2, 2**(8 * width - 1), int(rng.integers(2**(8 * width - 1)))]
        v = vals[int(rng.integers(len(vals)))]
        b[pos:pos + width] = v.to_bytes(width, "little")
        b[28:32] = struct.pack("<I", _crc(bytes(b[8:28])))
        return kind, bytes(b)
    # index (§5.4): absurd offsets / lengths / CRCs of one entry, index CRC recomputed
    M, n = struct.unpack("<QI", bytes(b[16:28]))
    start = 36 + M
    end = start + 16 * n
    k = int(rng.integers(n))
    off, width = [(start + 16 * k, 8), (start + 16 * k + 8, 4), (start + 16 * k + 12, 4)][int(rng.integers(3))]
    vals = [0, 1, 2**31, 2**(8 * width) - 1, int(rng.integers(2**(8 * width - 1)))]
    v = vals[int(rng.integers(len(vals)))]
    b[off:off + width] = v.to_bytes(width, "little")
    b[end:end + 4] = struct.pack("<I", _crc(bytes(b[start:end])))
    return kind, bytes(b)


def child(seeds_from: int, deadline: float, files_path: str, progress: str) -> int:
    """Run cases from ``seeds_from`` until ``deadline``; print one JSON line per case."""
    import numpy as np

    from bmz import api
    from bmz.errors import BmzError

    files = [bytes.fromhex(h) for h in json.loads(Path(files_path).read_text())]
    originals = [api.decompress(f) for f in files]
    seed = seeds_from
    # a CPU-time limit (ITIMER_PROF): a hung decoder burns CPU; a process merely starved of CPU
    # by other work on the machine is not hung
    signal.signal(signal.SIGPROF, lambda *a: (_ for _ in ()).throw(TimeoutError("case used > 10 s of CPU")))
    while time.time() < deadline:
        Path(progress).write_text(str(seed))
        kind, data = make_case(seed, files)
        t = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, 10.0)
        try:
            out = api.decompress(data)
            orig = originals[seed % len(files)]
            if data == files[seed % len(files)]:
                outcome = "original" if np.array_equal(out, orig) else "FAIL: undamaged file decoded differently"
            else:  # forged but decodable: values must respect the file's own stored range
                i = api.info(data)["intensity"]
                ok = out.size == 0 or (i["min"] <= out.min() and out.max() <= i["max"])
                same = out.shape == orig.shape and out.dtype == orig.dtype
                outcome = ("decoded (forged but decodable)" if same else "decoded (forged metadata)") \
                    if ok else "FAIL: decoded values outside the file's stored range"
        except BmzError as e:
            outcome = "BmzError:" + type(e).__name__
        except TimeoutError as e:
            outcome = f"FAIL: {e}"
        except Exception as e:  # noqa: BLE001 — exactly what the fuzzer looks for
            outcome = f"FAIL: {type(e).__name__}: {str(e)[:120]}"
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if rss > 4096:
            outcome = f"FAIL: resident memory {rss:.0f} MB"
        print(json.dumps({"seed": seed, "kind": kind, "outcome": outcome,
                          "ms": 1e3 * (time.process_time() - t)}), flush=True)
        seed += 1
    return 0


def source_files() -> list[bytes]:
    from bmz import api, io
    from bmz.codec import zoo

    vol = io.read(REPO / "samples" / "sct_t1w.nii.gz").data[8:14]
    files = [api.compress(vol, quality=3), api.compress(vol[:2, :32, :40], quality=8)]
    fam = [m for m in zoo.available_models() if m != zoo.DEFAULT_MODEL]
    if fam:
        files.append(api.compress(vol[:3], quality=2, model=sorted(fam)[0]))
    # bounded-error files (chunk format 3): lossless, and max error 2 over a learned base layer
    files.append(api.compress(vol[:2], lossless=True))
    files.append(api.compress(vol[2:4, :32, :40], max_error=2, base_quality=1))
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--replay", type=int, default=None, help="run one case by seed, with a traceback")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child(int(args._child[0]), float(args._child[1]), args._child[2], args._child[3])
    import tempfile

    files = source_files()
    if args.replay is not None:
        from bmz import api

        kind, data = make_case(args.replay, files)
        print(kind, len(data), "bytes")
        api.decompress(data)
        return 0
    td = Path(tempfile.mkdtemp())
    fp = td / "files.json"
    fp.write_text(json.dumps([f.hex() for f in files]))
    prog = td / "progress"
    deadline = time.time() + 60 * args.minutes
    started = time.time()
    seed, results, crashes = 0, [], []
    while time.time() < deadline:
        p = subprocess.run([sys.executable, __file__, "--_child", str(seed), str(deadline), str(fp), str(prog)],
                           capture_output=True, text=True)
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                results.append(json.loads(line))
        if p.returncode != 0:  # the process died: record the case it was on, go on after it
            bad = int(prog.read_text())
            crashes.append({"seed": bad, "returncode": p.returncode, "stderr": p.stderr[-300:]})
            seed = bad + 1
        else:
            break
    counts: dict[tuple, int] = {}
    for r in results:
        counts[(r["kind"], r["outcome"])] = counts.get((r["kind"], r["outcome"]), 0) + 1
    fails = [r for r in results if r["outcome"].startswith("FAIL")]
    L = ["# Fuzzing the parser and decoder", "",
         f"`python benchmarks/fuzz.py --minutes {args.minutes:g}`: {len(results)} cases in "
         f"{(time.time() - started) / 60:.1f} min on {os.cpu_count()} CPU(s), over {len(files)} valid files "
         "(README sample, MIT: flagship at q3 and q8, a factorized-prior model, and two bounded-error files: lossless, and max error 2 over a q1 base layer).", "",
         f"**Failures: {len(fails)}; process crashes: {len(crashes)}.**", "",
         "| mutation | outcome | cases |", "|---|---|---|"]
    for (k, o), n in sorted(counts.items()):
        L.append(f"| {k} | {o} | {n} |")
    slow = max((r["ms"] for r in results), default=0)
    L += ["", f"Slowest case: {slow:.0f} ms of CPU.", ""]
    for r in fails[:20]:
        L.append(f"- FAIL seed {r['seed']} ({r['kind']}): {r['outcome']} — `python benchmarks/fuzz.py --replay {r['seed']}`")
    for c in crashes[:20]:
        L.append(f"- CRASH seed {c['seed']}: exit {c['returncode']} — `python benchmarks/fuzz.py --replay {c['seed']}`")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return 1 if fails or crashes else 0


if __name__ == "__main__":
    sys.exit(main())
