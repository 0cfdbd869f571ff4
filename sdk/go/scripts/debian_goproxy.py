#!/usr/bin/env python3
"""Lays out a file:// GOPROXY from the Go sources Debian packages under /usr/share/gocode/src.

The SDK's go.mod requires the upstream versions those packages were made from (see the
MODULES table); this serves each one from Debian's copy so that `go` builds offline with
GOPROXY=file://DIR, GOSUMDB=off. Each module's go.mod is served without its requirements:
the SDK's go.mod lists every module the build needs, so the graph stays inside what Debian
ships. The zips hash differently from upstream's (Debian repacks), which is why the go.sum
this produces lives beside the proxy and is never committed.

    debian_goproxy.py OUT_DIR [SRC_ROOT]
"""
import json
import os
import sys
import zipfile

# module path -> (upstream version, Debian package it comes from)
MODULES = {
    "google.golang.org/grpc": ("v1.33.3", "golang-google-grpc-dev"),
    "google.golang.org/protobuf": ("v1.28.1", "golang-google-protobuf-dev"),
    "github.com/golang/protobuf": ("v1.5.2", "golang-github-golang-protobuf-1-5-dev"),
    "google.golang.org/genproto": ("v0.0.0-20200413115906-b5235f65be36", "golang-google-genproto-dev"),
    "golang.org/x/net": ("v0.7.0", "golang-golang-x-net-dev"),
    "golang.org/x/sys": ("v0.3.0", "golang-golang-x-sys-dev"),
    "golang.org/x/text": ("v0.7.0", "golang-golang-x-text-dev"),
}
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def escape(path: str) -> str:
    return "".join("!" + c.lower() if c.isupper() else c for c in path)


def go_version(src: str) -> str:
    try:
        with open(os.path.join(src, "go.mod")) as f:
            for line in f:
                if line.startswith("go "):
                    return line.split()[1]
    except OSError:
        pass
    return "1.11"


def files_of(src: str):
    """The files a module zip holds: everything but nested modules, vendor/ and VCS dirs."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        keep = []
        for d in sorted(dirnames):
            sub = os.path.join(dirpath, d)
            if d in ("vendor", ".git", "debian") or d.startswith(".") or d.startswith("_"):
                continue
            if os.path.exists(os.path.join(sub, "go.mod")):
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if name == "go.mod" and rel == "." or not os.path.isfile(full):
                continue
            yield full, name if rel == "." else os.path.join(rel, name)


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) == 3 else "/usr/share/gocode/src"
    missing = [f"{pkg} ({mod})" for mod, (_, pkg) in MODULES.items() if not os.path.isdir(os.path.join(root, mod))]
    if missing:
        print("missing Debian Go sources: " + ", ".join(missing), file=sys.stderr)
        return 1
    for mod, (version, _) in MODULES.items():
        src = os.path.join(root, mod)
        vdir = os.path.join(out, escape(mod), "@v")
        os.makedirs(vdir, exist_ok=True)
        gomod = f"module {mod}\n\ngo {go_version(src)}\n"
        with open(os.path.join(vdir, "list"), "w") as f:
            f.write(version + "\n")
        with open(os.path.join(vdir, version + ".info"), "w") as f:
            json.dump({"Version": version, "Time": "2020-01-01T00:00:00Z"}, f)
        with open(os.path.join(vdir, version + ".mod"), "w") as f:
            f.write(gomod)
        prefix = f"{mod}@{version}/"
        tmp = os.path.join(vdir, version + ".zip.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(zipfile.ZipInfo(prefix + "go.mod", FIXED_TIME), gomod)
            for full, rel in files_of(src):
                with open(full, "rb") as f:
                    z.writestr(zipfile.ZipInfo(prefix + rel, FIXED_TIME), f.read(), zipfile.ZIP_DEFLATED)
        os.replace(tmp, os.path.join(vdir, version + ".zip"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
