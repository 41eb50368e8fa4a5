"""What explain's writing costs on a file system, without the engine.

    python3 benchmarks/disk_probe.py DIR [DIR ...]

For each DIR (a scratch folder is made in it and removed): 31 MB written and fsynced (relevance.npy of
the 10,000 bundled images), then 10,000 small files (the size of a 28 x 28 heatmap PNG) written into
one folder in one thread, twice: created as they are written (as explain did before 02bd891), and
created empty first, then opened without O_CREAT and written (as explain does now, the creation
running while the backend starts). Prints one line per DIR.
"""
import os
import shutil
import sys
import time

N = 10000


def probe(root):
    d = os.path.join(root, "taylormap-probe")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    data = os.urandom(N * 784 * 4)
    t = time.perf_counter()
    with open(os.path.join(d, "r.bin"), "wb") as f:
        f.write(data)
        f.flush()
        t1 = time.perf_counter()
        os.fsync(f.fileno())
    t2 = time.perf_counter()
    png = os.urandom(700)  # a 28 x 28 heatmap PNG is about 0.6 to 1.2 kB
    times = {}
    for mode in ("created", "made ahead"):
        folder = os.path.join(d, mode.replace(" ", "-"))
        os.makedirs(folder)
        names = [os.path.join(folder, f"{i:05}.png") for i in range(N)]
        os.sync()
        t3 = time.perf_counter()
        if mode == "made ahead":
            for name in names:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644))
        t4 = time.perf_counter()
        flags = os.O_WRONLY | os.O_TRUNC | (os.O_CREAT if mode == "created" else 0)
        for name in names:
            fd = os.open(name, flags, 0o644)
            os.write(fd, png)
            os.close(fd)
        times[mode] = (t4 - t3, time.perf_counter() - t4)
    shutil.rmtree(d)
    (_, plain), (ahead, filled) = times["created"], times["made ahead"]
    print(f"{root}: 31 MB written {t1 - t:.3f} s, fsync {t2 - t1:.3f} s; 10,000 small files in one "
          f"folder, one thread: created and written {plain:.3f} s; made empty {ahead:.3f} s, "
          f"then written {filled:.3f} s")


if __name__ == "__main__":
    for root in sys.argv[1:] or ["/tmp"]:
        probe(root)
