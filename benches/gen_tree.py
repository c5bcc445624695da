#!/usr/bin/env python3
"""Generates the store benchmark's input tree, deterministically.

gen_tree.py DIR [--scale F]   about 1 GiB at scale 1: many small files and
                              some large ones, half compressible text, half
                              random bytes.
gen_tree.py DIR --mutate N    changes ~1% of the files (seeded by N).
gen_tree.py DIR --tiny COUNT  COUNT tiny distinct files (for gc timing).
"""
import os
import random
import sys

WORDS = (b"kiln store chunk blob tree digest layer cache build artifact "
         b"the of and to in is that for it as with was on be by").split()


def text(rng, size):
    out = bytearray()
    while len(out) < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(12))
        out += line + b" %d\n" % rng.randrange(1 << 30)
    return bytes(out[:size])


def content(rng, size):
    if rng.random() < 0.5:
        return text(rng, size)
    return rng.randbytes(size)


def generate(root, scale):
    rng = random.Random(42)
    small = int(16000 * scale)
    large = max(1, int(12 * scale))
    for i in range(small):
        d = os.path.join(root, "src", "d%03d" % (i % 200), "e%02d" % (i % 7))
        os.makedirs(d, exist_ok=True)
        size = rng.randrange(512, 48 * 1024)
        with open(os.path.join(d, "f%05d.dat" % i), "wb") as f:
            f.write(content(rng, size))
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    for i in range(large):
        with open(os.path.join(root, "large", "big%02d.bin" % i), "wb") as f:
            for _ in range(50):
                f.write(content(rng, 1 << 20))


def files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        out.extend(os.path.join(dirpath, n) for n in names)
    return sorted(out)


def mutate(root, seed):
    rng = random.Random(1000 + seed)
    all_files = files(root)
    for path in rng.sample(all_files, max(1, len(all_files) // 100)):
        size = os.path.getsize(path)
        if size > 4 << 20:
            with open(path, "r+b") as f:  # patch 4 KiB in the middle
                f.seek(rng.randrange(size - 4096))
                f.write(rng.randbytes(4096))
        else:
            with open(path, "wb") as f:
                f.write(content(rng, max(1, size)))


def tiny(root, count):
    for i in range(count):
        d = os.path.join(root, "t%03d" % (i % 500))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%06d" % i), "w") as f:
            f.write("tiny file %d\n" % i)


def main():
    root = sys.argv[1]
    args = sys.argv[2:]
    if args[:1] == ["--mutate"]:
        mutate(root, int(args[1]))
    elif args[:1] == ["--tiny"]:
        tiny(root, int(args[1]))
    else:
        scale = float(args[1]) if args[:1] == ["--scale"] else 1.0
        generate(root, scale)


if __name__ == "__main__":
    main()
