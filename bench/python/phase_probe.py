"""What the probes (topk_phases.py, attention_phases.py, indexer_parts.py) share: a kernel's source
with lines replaced by matching them (timer stamps, or parts cut out), built with nvcc beside a small
driver and run."""
import os
import shutil
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The device's nanosecond timer, for the stamps.
STAMP = ("__device__ __forceinline__ unsigned long long stamp() {\n"
         "  unsigned long long t;\n"
         "  asm volatile(\"mov.u64 %0, %globaltimer;\" : \"=l\"(t));\n"
         "  return t;\n"
         "}\n")


def parse_setting(text: str) -> dict:
    """A setting of switches, "NAME=VALUE ..." ("" for none) -> {NAME: VALUE} (the probes' and
    switch_ab.py's --setting)."""
    pairs = [item.partition("=") for item in text.split()]
    if any(not name or not sep for name, sep, _ in pairs):
        raise SystemExit(f"--setting takes NAME=VALUE ..., got {text!r}")
    return {name: value for name, _, value in pairs}


def instrumented_source(kernel: str, probes, head: str, driver: str) -> str:
    """head, then csrc/kernels/<kernel> with each (line, what it becomes) of probes replaced (each line
    must occur exactly once: an edit of the kernel that moves one is an error, to mend in probes),
    then driver."""
    src = open(os.path.join(ROOT, "csrc/kernels", kernel)).read()
    for line, becomes in probes:
        if src.count(line) != 1:
            raise SystemExit(f"{kernel} no longer has exactly one {line.strip()[:60]!r}: mend PROBES")
        src = src.replace(line, becomes)
    return head + src + driver


def build(name: str, source: str, folder: str, sources=(), flags=()) -> str:
    """Builds source (with csrc/kernels/<sources> beside it and nvcc's extra flags) for sm_90a into
    folder; returns the executable's path."""
    cu, exe = os.path.join(folder, f"{name}.cu"), os.path.join(folder, name)
    with open(cu, "w") as f:
        f.write(source)
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    subprocess.run([nvcc, "-std=c++17", "-O3", "-DLCATTN_WITH_CUDA", "-DNDEBUG", "-gencode",
                    "arch=compute_90a,code=sm_90a", f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc/kernels", cu,
                    *(os.path.join(ROOT, "csrc/kernels", s) for s in sources), *flags, "-o", exe], check=True)
    return exe


def run(exe: str, args, settings=({},)):
    """What exe prints when run with args, once for each of settings (environment variables on top of
    this process's: the dispatch's switches are read per call, so one build times several)."""
    return [subprocess.run([exe, *map(str, args)], check=True, capture_output=True, text=True,
                           env={**os.environ, **setting}).stdout for setting in settings]


def build_and_run(name: str, source: str, args, sources=(), settings=({},)):
    """build, then run."""
    with tempfile.TemporaryDirectory() as tmp:
        return run(build(name, source, tmp, sources), args, settings)
